"""The escnn fields family: a relaxable ``R2Conv`` of steerable fields and the group's action on fields.

``relax(conv, relaxed, **options)`` is what an escnn model (built-in or a user's) calls for every convolution
the method may relax. Plain: the ``escnn.nn.R2Conv`` itself (``in_type -> out_type``, GeometricTensors).
Relaxed: a :class:`RelaxedR2Conv`, ``f(x) = R2Conv(x) + theta * W(x)`` where the free map ``W`` is
a bias-free ``torch.nn.Conv2d`` over all ``in_type.size -> out_type.size`` channels with the same kernel
size, padding, stride and dilation (as in the published relaxed steerable CNNs), added before the
nonlinearity.

**Group action and penalty generators.** A group element ``g`` acts on a field tensor
``x [B, C, H, W]`` of type ``T`` by ``(g x)(p) = rho_T(g) x(g^-1 p)``: the fibre matrix ``rho_T(g)``
(escnn's ``T.representation(g)``) on the channel axis and the base-space action on the pixel grid. The
Lie-type penalty of the method (docs/ARCHITECTURE.md, "Penalty") uses, for finite groups, the finite difference
``sum_g ||W(g x) - g W(x)||^2`` over a set of generators ``g``:

- ``generators="grid"`` (default): the generators of the largest subgroup that acts *exactly* on the pixel
  grid, i.e. the group's rotation by 90 degrees (180 if 90 is not in the group; none for odd ``N``) and, for
  ``D_N``, the reflection. The grid action is an exact pixel permutation, so an escnn-equivariant kernel
  scores exactly 0. For ``C_8`` this penalises only the C4 part of the constraint (a free kernel that is
  C4- but not C8-equivariant is not penalised); for SO(2) it is the 90-degree rotation.
- ``generators="group"``: the group's own generators (the 2 pi / N rotation, and the reflection for
  ``D_N``). Rotations that are not multiples of 90 degrees move pixels off the grid and are applied with
  bilinear interpolation, so the grid action is approximate: even an escnn-equivariant kernel scores a small
  positive penalty (escnn kernels are themselves only approximately 45-degree equivariant on a grid).

With exact (permutation) grid actions and orthogonal fibre representations the penalty is computed in
weight space at the cost of one convolution: ``||W(g x) - g W(x)|| = ||(g^-1 W g - W)(x)||`` and
``g^-1 W g`` is again a convolution, with kernel ``K_g(q) = rho_out(g)^-1 K(g q) rho_in(g)``; the norm term
``||W x||^2`` shares the same convolution call. Otherwise the generic
:func:`relaxbench.relax.lie.lie_derivative_sq` is used.

**Subsampled penalty.** That convolution has ``(G + 1) C_out`` output channels (``G`` generators), and with
its kernel gradient it costs about 4/3 of the layer's own forward and backward convolutions on the same
examples. ``penalty_examples = n`` evaluates it on the first ``n`` examples of each (shuffled) batch: both
terms are batch means, so this is an unbiased estimate of them (before the square root) whose gradient is
still the full-rank ``2 D S_n`` of the subsample's input statistics ``S_n``. For signed-permutation fibre
representations (regular, quotient and irreps fields at multiples of 90 degrees) the conjugation is done by
indexing, not by dense ``[C, C]`` products.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Literal

import escnn.group._numerical as _escnn_numerical
import numpy as np
import torch
from escnn import nn as enn
from escnn.group import GroupElement as EscnnElement
from torch import Tensor, nn
from torch.nn import functional as F

from relaxbench.relax.lie import make_finite_action
from relaxbench.relax.relaxed import RelaxedLayer

__all__ = [
    "KernelSpan",
    "RelaxedR2Conv",
    "fibre_matrix",
    "field_action",
    "generator_elements",
    "grid_covers_group",
    "group_averaged_kernel",
    "is_grid_exact",
    "relax",
]

Generators = Literal["full", "grid", "group"]

# escnn 1.0.11 computes intertwiner null spaces (needed by D_N and SO(2) kernel bases) with scikit-learn's
# randomized_svd on an np.matrix, which current scikit-learn rejects (escnn issue #112), and with
# random_state=None, so the basis could differ between processes. Its own fallback, scipy.linalg.svd, is
# exact and deterministic; make escnn use it.
_escnn_numerical.randomized_svd = None


def _basespace_matrix(gspace, g: EscnnElement) -> np.ndarray:
    """``[2, 2]`` matrix of ``g`` acting on the plane (x to the right, y up)."""
    return np.asarray(gspace.basespace_action(g), dtype=np.float64)


def is_grid_exact(gspace, g: EscnnElement) -> bool:
    """Whether ``g`` moves pixel centres onto pixel centres (a signed permutation of the axes)."""
    m = _basespace_matrix(gspace, g)
    return bool(np.allclose(m, np.round(m), atol=1e-9))


def _grid_gather_index(m: np.ndarray, size: int) -> Tensor:
    """Flat indices ``[size * size]``: output pixel -> source pixel for the exact action of ``m``."""
    return _gather_index(tuple(np.round(m).astype(int).flatten().tolist()), size)


@lru_cache(maxsize=256)
def _gather_index(m_entries: tuple[int, ...], size: int) -> Tensor:
    m = np.asarray(m_entries, dtype=np.float64).reshape(2, 2)
    r, c = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    # doubled coordinates about the centre keep everything integer for odd and even sizes
    p = np.stack([2 * c - (size - 1), (size - 1) - 2 * r]).reshape(2, -1)
    q = np.round(np.linalg.inv(m)).astype(np.int64) @ p
    src_c, src_r = (q[0] + size - 1) // 2, ((size - 1) - q[1]) // 2
    return torch.from_numpy(src_r * size + src_c)


def _grid_operator(m: np.ndarray) -> Callable[[Tensor], Tensor]:
    """``x'(p) = x(m^-1 p)`` on the last two (square) axes of ``x [..., S, S]``, about the grid centre, as a
    function of ``x`` (the work that depends on ``m`` alone is done once).

    Exact index permutation when ``m`` is a signed permutation matrix; bilinear interpolation (zeros outside)
    otherwise. Array rows run along -y, columns along +x (escnn's convention).
    """
    if np.allclose(m, np.round(m), atol=1e-9):
        entries = tuple(np.round(m).astype(int).flatten().tolist())

        def gather(x: Tensor) -> Tensor:
            size = _square_size(x)
            index = _gather_index(entries, size).to(x.device)
            return x.flatten(-2).index_select(-1, index).unflatten(-1, (size, size))

        return gather
    flip = np.diag([1.0, -1.0])  # normalised grid coordinates have y pointing down
    inv = torch.as_tensor(flip @ np.linalg.inv(m) @ flip)
    affine = torch.cat([inv, inv.new_zeros(2, 1)], 1)  # [2, 3]

    def interpolate(x: Tensor) -> Tensor:
        size = _square_size(x)
        flat = x.reshape(-1, 1, size, size)
        theta = affine.to(dtype=x.dtype, device=x.device).expand(flat.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(flat.shape), align_corners=True)
        out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.reshape(x.shape)

    return interpolate


def _square_size(x: Tensor) -> int:
    if x.shape[-2] != x.shape[-1]:
        raise ValueError(f"the grid action needs square maps, got {tuple(x.shape[-2:])}")
    return x.shape[-1]


def _axis_ops(index: Tensor, size: int) -> tuple[bool, tuple[int, ...]]:
    """The exact grid action with gather ``index [size * size]`` (from :func:`_gather_index`) as array
    operations on the last two axes: ``(transpose, flip dims)``, applied in that order."""
    grid = torch.arange(size * size).view(size, size)
    target = grid.flatten()[index].view(size, size)
    for transpose in (False, True):
        for flips in ((), (-2,), (-1,), (-2, -1)):
            moved = grid.t() if transpose else grid
            if torch.equal(moved.flip(flips) if flips else moved, target):
                return transpose, flips
    raise ValueError("the grid action is not a signed permutation of the axes")


def _signed_permutation(m: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(index, sign)`` with ``m @ v = sign * v[index]`` if the square matrix ``m`` is a signed permutation
    (one entry of +-1 per row and column, up to escnn's float64 rounding of 1e-9), else ``None``."""
    index = m.abs().argmax(1)
    sign = m.gather(1, index[:, None]).squeeze(1).sign()
    rebuilt = torch.zeros_like(m).scatter(1, index[:, None], sign[:, None])
    if not (torch.allclose(rebuilt, m, rtol=0, atol=1e-9) and len(set(index.tolist())) == len(index)):
        return None
    return index, sign


def fibre_matrix(field_type: enn.FieldType, g: EscnnElement) -> Tensor:
    """``rho_T(g)`` ``[C, C]`` (float64) of a field type ``T`` with ``C = T.size`` channels."""
    return torch.as_tensor(np.asarray(field_type.representation(g)), dtype=torch.float64)


def field_action(x: Tensor, field_type: enn.FieldType, g: EscnnElement) -> Tensor:
    """``(g x)(p) = rho_T(g) x(g^-1 p)`` for a field tensor ``x [B, C, S, S]`` of type ``T`` (differentiable)."""
    return _field_operator(fibre_matrix(field_type, g), _basespace_matrix(field_type.gspace, g))(x)


def _field_operator(rho: Tensor, m: np.ndarray) -> Callable[[Tensor], Tensor]:
    """:func:`field_action` of the fibre matrix ``rho [C, C]`` and base-space matrix ``m [2, 2]`` as a function of
    ``x``, with escnn's matrices and the grid work that depends on ``m`` alone computed once."""
    move = _grid_operator(m)
    return lambda x: move(torch.einsum("ij,bj...->bi...", rho.to(x), x))


def grid_covers_group(gspace) -> bool:
    """Whether the exact grid elements (``generators="grid"``) generate the whole group: C_N and D_N with N in
    {1, 2, 4}; not C8 (45 degrees is off the grid), not SO(2)."""
    group = gspace.fibergroup
    name = type(group).__name__
    if name == "SO2":
        return False
    n = group.rotation_order if name == "DihedralGroup" else group.order()
    return n in (1, 2, 4)


def generator_elements(gspace, generators: Generators = "full") -> list[EscnnElement]:
    """The group elements the penalty uses (see the module docstring); raises if there are none. ``"full"`` uses
    the grid's (its span term, :class:`KernelSpan`, covers the rest of the group)."""
    group = gspace.fibergroup
    name = type(group).__name__
    if generators == "group":
        if name == "SO2":
            raise ValueError("SO(2) has no finite generators; use generators='grid' (the 90-degree rotation)")
        return list(group.generators)
    if generators not in ("full", "grid"):
        raise ValueError(f"generators must be 'full', 'grid' or 'group', got {generators!r}")
    if name == "SO2":
        return [group.element(np.pi / 2)]
    n = group.rotation_order if name == "DihedralGroup" else group.order()
    step = n // 4 if n % 4 == 0 else (n // 2 if n % 2 == 0 else None)
    if name == "CyclicGroup":
        elements = [group.element(step)] if step else []
    elif name == "DihedralGroup":
        elements = ([group.element((0, step))] if step else []) + [group.element((1, 0))]
    else:
        raise ValueError(f"no penalty generators for the group {group}")
    if not elements:
        raise ValueError(
            f"{group} contains no rotation acting exactly on the pixel grid; use generators='group'"
        )
    return elements


class KernelSpan(nn.Module):
    """The orthogonal projection of a ``[C_out, C_in, k, k]`` kernel onto an escnn ``R2Conv``'s equivariant kernels.

    escnn builds an ``R2Conv``'s kernel as a combination of basis filters, one basis per pair of (input field,
    output field) representations, shared by every field pair of that kind. For each such pair this samples the
    basis once (a one-field ``R2Conv`` with the layer's rings, sigma and dilation), orthonormalises it (``Q``,
    ``[d_out d_in k^2, b]``, float64) and projects every block of that kind: ``P(K)_block = Q Q^T K_block``.
    ``residual(K) = K - P(K)`` is zero exactly for kernels escnn could have produced (every equivariant free
    map in escnn's sense) and positive otherwise, whatever part of the group the pixel grid can represent: the
    whole-group term of ``generators="full"``. The basis filters are first averaged over the grid's exact
    subgroup (escnn samples them in float32, so they are grid-equivariant only to float32 rounding): every
    kernel of the span then also has an exactly zero grid finite difference. Construction checks that the
    layer's own kernel has (relative) residual below 1e-4, i.e. that the bases match the layer's (custom basis
    filters would not).
    """

    def __init__(self, conv: enn.R2Conv) -> None:
        super().__init__()
        gspace, k = conv.in_type.gspace, conv.kernel_size
        grid = _grid_group(generator_elements(gspace, "grid"))
        self.blocks: list[tuple[int, int, int, int]] = []
        for j, ((rep_in, rep_out), (in_idx, out_idx)) in enumerate(_field_pairs(conv).items()):
            tiny = enn.R2Conv(
                enn.FieldType(gspace, [rep_in]),
                enn.FieldType(gspace, [rep_out]),
                k,
                dilation=conv.dilation,
                sigma=conv._sigma,
                rings=conv._rings,
                initialize=False,
            )
            self.register_buffer(f"q{j}", _orthonormal_kernel_basis(tiny, grid), persistent=False)
            self.register_buffer(f"in{j}", in_idx.flatten(), persistent=False)
            self.register_buffer(f"out{j}", out_idx.flatten(), persistent=False)
            self.blocks.append((out_idx.shape[0], rep_out.size, in_idx.shape[0], rep_in.size))
        with torch.no_grad():  # in the basis' dtype: escnn's basis cache may hold a cast copy
            basis_dtype = next(conv.basisexpansion.buffers()).dtype
            kernel = conv.basisexpansion(conv.weights.detach().to(basis_dtype)).double()
            kernel = kernel.view(conv.out_type.size, conv.in_type.size, k, k)
            rel = (self.residual(kernel).norm() / kernel.norm().clamp_min(1e-300)).item()
        if rel > 1e-4:
            raise ValueError(
                f"generators='full': the layer's kernel is {rel:.2g} (relative) off the sampled equivariant basis "
                "(custom basis arguments?); use generators='grid' or 'group'"
            )

    def residual(self, kernel: Tensor) -> Tensor:
        """``K - P(K)`` for ``kernel [C_out, C_in, k, k]`` (differentiable, same dtype)."""
        k = kernel.shape[-1]
        projected = torch.zeros_like(kernel)
        for j, (n_out, d_out, n_in, d_in) in enumerate(self.blocks):
            q = getattr(self, f"q{j}").to(kernel)
            out_idx, in_idx = getattr(self, f"out{j}"), getattr(self, f"in{j}")
            block = kernel.index_select(0, out_idx).index_select(1, in_idx)
            rows = (
                block.view(n_out, d_out, n_in, d_in, k, k).permute(0, 2, 1, 3, 4, 5).reshape(n_out * n_in, -1)
            )
            back = ((rows @ q) @ q.t()).view(n_out, n_in, d_out, d_in, k, k).permute(0, 2, 1, 3, 4, 5)
            projected = projected.index_put(
                (out_idx[:, None], in_idx[None, :]), back.reshape(n_out * d_out, n_in * d_in, k, k)
            )
        return kernel - projected


def _field_pairs(conv: enn.R2Conv) -> dict:
    """``{(rep_in, rep_out): (in channels [n_in, d_in], out channels [n_out, d_out])}`` grouping the layer's
    fields by representation."""

    def channels(field_type: enn.FieldType) -> dict:
        groups: dict = {}
        start = 0
        for rep in field_type.representations:
            groups.setdefault(rep, []).append(torch.arange(start, start + rep.size))
            start += rep.size
        return {rep: torch.stack(idx) for rep, idx in groups.items()}

    ins, outs = channels(conv.in_type), channels(conv.out_type)
    return {(ri, ro): (ii, oi) for ri, ii in ins.items() for ro, oi in outs.items()}


@torch.no_grad()
def _orthonormal_kernel_basis(conv: enn.R2Conv, grid: list[EscnnElement]) -> Tensor:
    """``[d_out d_in k^2, b]`` float64 orthonormal basis of a one-field ``R2Conv``'s kernels (``b`` may be 0): the
    left singular vectors of escnn's sampled basis filters (``[b0, d_out, d_in, k^2]``, one block for one field),
    each averaged over the ``grid`` elements."""
    sampled = [b for name, b in conv.basisexpansion.named_buffers() if name.endswith("sampled_basis")]
    size = conv.out_type.size * conv.in_type.size * conv.kernel_size**2
    if not sampled:  # no equivariant kernel between these two fields
        return torch.zeros(size, 0, dtype=torch.float64)
    (basis,) = sampled
    k = conv.kernel_size
    filters = basis.double().reshape(basis.shape[0], conv.out_type.size, conv.in_type.size, k, k)
    filters = torch.stack([_average_kernel(f, conv.in_type, conv.out_type, grid) for f in filters])
    u, s, _ = torch.linalg.svd(filters.reshape(basis.shape[0], size).t(), full_matrices=False)
    return u[:, s > 1e-10 * s.max()].contiguous()


class RelaxedR2Conv(RelaxedLayer, enn.EquivariantModule):
    """``f(x) = R2Conv(x) + theta * W(x)``: escnn field types ``in_type -> out_type`` (GeometricTensors).

    Args:
        conv: the equivariant ``R2Conv`` (zero padding).
        generators: which group elements the penalty uses (module docstring).
        init_std: standard deviation of the free kernel at initialisation (0: a zero free map).
        penalty_examples: evaluate the penalty on only the first ``n`` examples of each batch (``None``: all).
            Both terms are batch means, so a subset is an unbiased estimate of them (before the square root)
            at a fraction of the cost.

    The free map ``W`` is a bias-free ``Conv2d(in_type.size -> out_type.size)``, so the Lie term sees all
    of it. The group action (:attr:`action`) and the penalty work on raw tensors ``[B, C, H, W]``. For
    ``theta > 0`` the two kernels are summed and convolved once (fused forward); at ``theta == 0`` only the
    ``R2Conv`` runs, bit for bit the plain model. :meth:`export` gives the projected layer as a ``Conv2d``.
    """

    def __init__(
        self,
        conv: enn.R2Conv,
        generators: Generators = "full",
        init_std: float = 1e-4,
        penalty_examples: int | None = None,
    ) -> None:
        if conv.padding_mode != "zeros" or conv.groups != 1:
            raise ValueError("RelaxedR2Conv needs an R2Conv with zero padding and groups=1")
        c_in, c_out = conv.in_type.size, conv.out_type.size
        elements = generator_elements(conv.in_type.gspace, generators)

        def free() -> nn.Conv2d:
            layer = nn.Conv2d(
                c_in,
                c_out,
                conv.kernel_size,
                stride=conv.stride,
                padding=conv.padding,
                dilation=conv.dilation,
                bias=False,
            )
            nn.init.normal_(layer.weight, 0.0, init_std) if init_std > 0 else nn.init.zeros_(layer.weight)
            return layer

        gspace = conv.in_type.gspace
        base = [_basespace_matrix(gspace, g) for g in elements]
        rho_in = torch.stack(
            [fibre_matrix(conv.in_type, g) for g in elements]
        )  # [G, C_in, C_in], escnn's, once
        rho_out = torch.stack([fibre_matrix(conv.out_type, g) for g in elements])

        def act(rhos: Tensor) -> Callable[[Tensor], Tensor]:
            ops = [_field_operator(rho, m) for rho, m in zip(rhos, base)]
            return lambda x: torch.stack([op(x) for op in ops])

        super().__init__(conv, free, make_finite_action(act(rho_in), act(rho_out)))
        self.elements = elements
        self.in_type, self.out_type = conv.in_type, conv.out_type
        self._output_head: Tensor | None = None  # f(x) of the recorded examples, last training forward
        self._free_head: Tensor | None = None  # W x of the recorded examples, if the norm penalty computed it
        if penalty_examples is not None and penalty_examples < 1:
            raise ValueError(f"penalty_examples must be None or >= 1, got {penalty_examples}")
        self.penalty_examples = penalty_examples
        self.span = KernelSpan(conv) if generators == "full" and not grid_covers_group(gspace) else None
        self.weight_space = all(is_grid_exact(gspace, g) for g in elements)
        if self.weight_space:
            # K_g(q) = rho_out(g)^-1 K(g q) rho_in(g): kernel-space conjugation by each generator
            rho_out_inv = rho_out.transpose(1, 2)
            for rho in (*rho_in, *rho_out_inv):
                if not torch.allclose(rho @ rho.t(), torch.eye(len(rho), dtype=rho.dtype), atol=1e-9):
                    raise ValueError("the weight-space penalty needs orthogonal fibre representations")
            index = torch.stack(
                [_grid_gather_index(_basespace_matrix(gspace, ~g), conv.kernel_size) for g in elements]
            )
            self.kernel_ops = [_axis_ops(i, conv.kernel_size) for i in index]
            # rho_out^-1 K picks (and signs) rows of K, K rho_in columns: as indices when both are signed
            # permutations, else as dense matrices
            perms = [_signed_permutation(r) for r in (*rho_out_inv, *rho_in.transpose(1, 2))]
            self.by_index = all(p is not None for p in perms)
            if self.by_index:
                n = len(elements)
                for name, part in (("out", perms[:n]), ("in", perms[n:])):
                    self.register_buffer(f"{name}_index", torch.stack([i for i, _ in part]), persistent=False)
                    self.register_buffer(f"{name}_sign", torch.stack([v for _, v in part]), persistent=False)
                self.signed = bool((self.out_sign < 0).any() or (self.in_sign < 0).any())
            else:
                self.register_buffer("rho_in", rho_in, persistent=False)
                self.register_buffer("rho_out_inv", rho_out_inv, persistent=False)

    def forward(self, x: enn.GeometricTensor) -> enn.GeometricTensor:
        conv = self.equivariant
        if self.theta == 0.0:
            return conv(x)
        self._record(x.tensor[: self.penalty_examples])
        weight, bias = conv.expand_parameters() if self.training else (conv.filter, conv.expanded_bias)
        weight = weight + self.mix * self.free.weight
        out = F.conv2d(x.tensor, weight, bias, conv.stride, conv.padding, conv.dilation)
        if self.training and self.record_input:
            self._output_head = out[: self.penalty_examples].detach()
        return enn.GeometricTensor(out, self.out_type)

    def _record(self, x: Tensor) -> None:
        super()._record(x)
        self._output_head = self._free_head = None

    @torch.no_grad()
    def activity_norms(self) -> tuple[Tensor, Tensor] | None:
        """``(||R2Conv x||, ||W x||)`` on the penalty's examples of the last training batch (the first
        ``penalty_examples``): ``W x`` as the norm penalty computed it (else one convolution of those examples
        with the free kernel), ``R2Conv x = f(x) - theta W x`` from the forward's output."""
        if self._output_head is None or self._last_input is None:
            return super().activity_norms()
        w_x = self._free_head
        if w_x is None:
            free = self.free
            w_x = F.conv2d(self._last_input, free.weight, None, free.stride, free.padding, free.dilation)
        eq = self._output_head - self.theta * w_x
        return torch.linalg.vector_norm(eq), torch.linalg.vector_norm(w_x)

    def lie_kernels(self) -> Tensor:
        """``[G, C_out, C_in, k, k]``: ``g^-1 W g - W`` for each generator ``g``, where ``g^-1 W g`` has the
        kernel ``K_g(q) = rho_out(g)^-1 K(g q) rho_in(g)``."""
        weight = self.free.weight
        kernels = []
        for g, (transpose, flips) in enumerate(self.kernel_ops):
            moved = weight.transpose(-2, -1) if transpose else weight  # K(g q)
            moved = moved.flip(flips) if flips else moved
            if self.by_index:
                moved = moved.index_select(0, self.out_index[g]).index_select(1, self.in_index[g])
                if self.signed:
                    moved = (
                        moved
                        * self.out_sign[g].to(weight)[:, None, None, None]
                        * self.in_sign[g].to(weight)[None, :, None, None]
                    )
            else:
                moved = torch.einsum(
                    "op,pikl,ij->ojkl", self.rho_out_inv[g].to(weight), moved, self.rho_in[g].to(weight)
                )
            kernels.append(moved - weight)
        return torch.stack(kernels)

    def penalty_terms(self, lie: bool = True, norm: bool = True) -> tuple[Tensor, Tensor]:
        if not self.weight_space or self._last_input is None:
            return super().penalty_terms(lie, norm)
        x, weight = self._last_input, self.free.weight
        zero = weight.new_zeros(())
        kernels = []
        n_lie = len(self.kernel_ops) + (self.span is not None)
        if lie:
            kernels.append(self.lie_kernels().flatten(0, 1))
            if self.span is not None:
                kernels.append(self.span.residual(weight))
        if norm:
            kernels.append(weight)
        if not kernels:
            return zero, zero
        conv = self.free
        out = F.conv2d(x, torch.cat(kernels), None, conv.stride, conv.padding, conv.dilation)
        if norm:  # W x of the recorded examples, for activity_norms
            self._free_head = out[:, -weight.shape[0] :].detach()
        per_kernel = out.pow(2).sum((0, 2, 3)).view(-1, weight.shape[0]).sum(1) / x.shape[0]
        ld = per_kernel[:n_lie].sum() if lie else zero
        return ld, per_kernel[-1] if norm else zero

    def evaluate_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.equivariant.evaluate_output_shape(input_shape)

    def export(self) -> nn.Conv2d:
        """The projected layer (theta must be 0) as a plain ``torch.nn.Conv2d`` (escnn's ``R2Conv.export``)."""
        if self.theta != 0.0:
            raise ValueError(f"only a projected layer (theta = 0) can be exported, theta is {self.theta}")
        return self.equivariant.export()


def _grid_group(generators: list[EscnnElement], max_order: int = 64) -> list[EscnnElement]:
    """Every element of the finite group that ``generators`` generate (grid-exact generators: a subgroup of D4)."""
    elements, frontier = [generators[0].group.identity], list(generators)
    while frontier:
        g = frontier.pop()
        if g in elements:
            continue
        elements.append(g)
        if len(elements) > max_order:
            raise ValueError(f"the penalty generators generate more than {max_order} elements")
        frontier += [g @ h for h in generators]
    return elements


def _average_kernel(kernel: Tensor, in_type, out_type, elements: list[EscnnElement]) -> Tensor:
    """``mean_h rho_out(h)^-1 K(h q) rho_in(h)`` of ``kernel [C_out, C_in, k, k]`` over ``elements`` (float64)."""
    kernel = kernel.to(torch.float64)
    trivial = enn.FieldType(in_type.gspace, [in_type.gspace.trivial_repr])
    total = torch.zeros_like(kernel)
    for h in elements:
        moved = field_action(kernel.flatten(0, 1).unsqueeze(1), trivial, ~h).view_as(kernel)  # K(h q)
        total += torch.einsum("co,cikl,ij->ojkl", fibre_matrix(out_type, h), moved, fibre_matrix(in_type, h))
    return total / len(elements)


def group_averaged_kernel(layer: RelaxedR2Conv, max_order: int = 64) -> Tensor:
    """``[C_out, C_in, k, k]``: the layer's free kernel averaged over the finite group ``H`` its penalty
    generators generate, ``mean_h rho_out(h)^-1 K(h q) rho_in(h)`` (exact: the grid generators act on the pixel
    grid by permutations; float64), then, where the penalty has a span term (:class:`KernelSpan`: C8, SO(2)),
    projected onto the layer's equivariant kernels: an equivariant kernel for the whole group."""
    elements = _grid_group(layer.elements, max_order)
    total = _average_kernel(layer.free.weight.detach(), layer.in_type, layer.out_type, elements)
    return total if layer.span is None else total - layer.span.residual(total)


def relax(
    conv: enn.R2Conv,
    relaxed: bool,
    generators: Generators = "full",
    init_std: float = 1e-4,
    penalty_examples: int | None = None,
) -> enn.EquivariantModule:
    """``conv`` itself for a plain model, else ``conv(x) + theta * W(x)`` (a :class:`RelaxedR2Conv`, which
    documents the options).

    Build ``conv`` with ``recompute=True``: escnn otherwise shares one sampled-basis module between all
    convolutions of the same types in the process, so casting or moving one model (``.double()``, ``.cuda()``)
    would silently change every other model built from that basis.
    """
    return RelaxedR2Conv(conv, generators, init_std, penalty_examples) if relaxed else conv
