"""A relaxed layer whose free branch is one dense matrix on the last feature axis.

This is the free branch of SEGNN / e3nn models (a ``Linear(dim_in -> dim_out)`` on the flattened irreps
vector), of EGNN-style vector updates (``Linear(3 C -> 3)`` on a particle's stacked vectors) and of Vector
Neurons (a ``Linear(3*C_in -> 3*C_out)`` with bias on each point's flattened (channel, xyz) vector, the
features on axis 1 of a ``[B, 3 C, P]`` view: ``feature_dim=1``). Two things make it cheaper than the generic
:class:`~relaxbench.relax.relaxed.RelaxedLayer`:

- **Fused forward.** When the equivariant map is itself linear on the same input (``equivariant_matrix``
  gives its dense ``[d_in, d_out]`` matrix), ``f_eq(x) + theta W x`` is computed as one matmul with the summed
  weight. At ``theta = 0`` the equivariant module runs alone, so the projected model is bit-for-bit its plain
  twin.
- **Penalties from the second moment.** For a linear ``W`` and generator matrices ``G_in``, ``G_out`` the Lie
  derivative is the matrix ``L_A = W G_in_A - G_out_A W``, and

      sum_x ||L_A x||^2 = tr(L_A S L_A^T),   S = sum_x x x^T        (d_in x d_in)

  so the data enter only through ``S`` (and ``m = sum_x x`` for the bias in the norm term): the penalty costs
  one ``[(G + 1) d_out, d_in] x [d_in, d_in]`` matmul after one ``O(n d^2)`` pass over the inputs, independent of
  how many points ``x`` covers; ``W A`` and ``B W`` use the generators as sparse matrices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from relaxbench.relax.lie import FeatureAction, apply_matrices, published_layout_generators
from relaxbench.relax.relaxed import RelaxedLayer

__all__ = ["DenseRelaxedLinear", "second_moment_norms", "second_moment_penalty"]


def second_moment_penalty(
    lie_rows: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    moments: tuple[Tensor, Tensor, int],
    batch: int,
) -> tuple[Tensor, Tensor]:
    """Both penalty terms of a dense free map ``x -> W x + b`` from its input's moments, per example.

    Args:
        lie_rows: ``[G d_out, d_in]`` the Lie derivatives ``L_A = W A - B W`` stacked by rows (``None``: no
            Lie term).
        weight: ``W [d_out, d_in]`` (``None``: no norm term); ``bias``: ``b [d_out]`` or ``None``.
        moments: ``(S [d_in, d_in], m [d_in], n)``: ``sum_x x x^T``, ``sum_x x`` and the number of vectors.
        batch: examples the sums run over (both terms are divided by it).

    Returns:
        ``(ld, sq)``: ``sum_A tr(L_A S L_A^T) / batch`` and ``(tr(W S W^T) + 2 b.W m + n |b|^2) / batch``
        (zero for an absent term). Both quadratic forms share one ``[rows, d_in] @ S`` product, and their
        gradient ``2 M S`` reuses it (first order: the result is not twice differentiable).
    """
    s, m, n = moments
    rows = [r for r in (lie_rows, weight) if r is not None]
    zero = s.new_zeros(())
    if not rows:
        return zero, zero
    mats = torch.cat(rows)
    ms = mats.detach() @ s

    def quadratic_form(r: slice) -> Tensor:
        q = torch.dot(ms[r].flatten(), mats[r].flatten())
        return 2 * q - q.detach()

    n_lie = 0 if lie_rows is None else lie_rows.shape[0]
    ld = quadratic_form(slice(0, n_lie)) / batch if lie_rows is not None else zero
    sq = zero
    if weight is not None:
        sq = quadratic_form(slice(n_lie, None))
        if bias is not None:
            sq = sq + 2 * bias @ (weight @ m) + n * bias.pow(2).sum()
        sq = sq / batch
    return ld, sq


@torch.no_grad()
def second_moment_norms(
    equivariant: Tensor, weight: Tensor, bias: Tensor | None, moments: tuple[Tensor, Tensor, int]
) -> tuple[Tensor, Tensor]:
    """``(||E x||, ||W x + b||)`` over the vectors ``x`` whose moments are given, for a fused forward's
    :meth:`~relaxbench.relax.relaxed.RelaxedLayer.activity_norms`.

    Args:
        equivariant: ``E [d_out, d_in]``, the equivariant map's matrix (linear, no bias).
        weight, bias: the free map ``W [d_out, d_in]`` and its bias ``b [d_out]`` or ``None``.
        moments: ``(S [d_in, d_in], m [d_in], n)`` as for :func:`second_moment_penalty`.

    ``sum_x ||M x||^2 = tr(M S M^T)`` for both matrices in one ``[2 d_out, d_in] @ [d_in, d_in]`` product,
    nothing per vector (the penalty has usually computed ``S`` already).
    """
    s, m, n = moments
    mats = torch.cat([equivariant, weight])
    rows = ((mats @ s) * mats).sum(1)
    d_out = equivariant.shape[0]
    eq_sq, free_sq = rows[:d_out].sum(), rows[d_out:].sum()
    if bias is not None:
        free_sq = free_sq + 2 * bias @ (weight @ m) + n * bias.pow(2).sum()
    return eq_sq.clamp_min(0).sqrt(), free_sq.clamp_min(0).sqrt()


class DenseRelaxedLinear(RelaxedLayer):
    """``f(x) = f_eq(x) + theta * (W x + b)`` with a dense free map ``W [d_out, d_in]`` on one feature axis.

    Layouts (``feature_dim``):

    - ``-1`` (default): ``x [*lead, d_in] -> [*lead, d_out]``, every leading index a separate vector.
    - ``1``: ``x [B, d_in, P] -> [B, d_out, P]`` (channels first, ``P`` vectors per example; the Vector Neuron
      view of ``[B, C, 3, *pts]`` features).

    Args:
        equivariant: the equivariant map on the same layout (e.g. ``e3nn.o3.Linear``).
        d_in, d_out: feature sizes.
        gen_in: ``[G, d_in, d_in]`` generators acting on the input features: Lie-algebra generators and, after
            them, finite group elements (e.g. the inversion), which enter the penalty the same way for a linear
            ``W`` (``W A - B W``).
        gen_out: ``[G, d_out, d_out]`` the same generators on the output features.
        init_std: standard deviation of the free weight at initialisation (0 gives a zero free map).
        bias: whether the free map has a bias (zero at init; kept out of the Lie term).
        equivariant_matrix: optional zero-argument callable returning ``f_eq``'s dense matrix in the layer's
            layout (``[d_in, d_out]``, ``x @ M``, for ``feature_dim=-1``; ``[d_out, d_in]``, ``M @ x``, for
            ``feature_dim=1``), enabling the fused forward (only valid if ``f_eq`` is linear without bias).
        n_lie: how many of the generators are Lie-algebra generators (the first ``n_lie``; ``None``: all).

    The generators are kept as sparse matrices only (a dense ``[G, d, d]`` buffer costs ``O(d^2)`` memory per
    layer); :attr:`gen_in` and :attr:`gen_out` give them dense. The penalty statistics are per example of the
    leading axis: ``S`` is divided by ``x.shape[0]``.
    """

    def __init__(
        self,
        equivariant: nn.Module,
        d_in: int,
        d_out: int,
        gen_in: Tensor,
        gen_out: Tensor,
        init_std: float = 1e-4,
        bias: bool = False,
        equivariant_matrix: Callable[[], Tensor] | None = None,
        feature_dim: int = -1,
        n_lie: int | None = None,
    ) -> None:
        if feature_dim not in (-1, 1):
            raise ValueError(f"feature_dim must be -1 (last axis) or 1 (channels first), got {feature_dim}")
        if gen_in.shape[0] != gen_out.shape[0]:
            raise ValueError(f"input has {gen_in.shape[0]} generators, output {gen_out.shape[0]}")

        def free() -> nn.Linear:
            lin = (_ChannelsFirstLinear if feature_dim == 1 else nn.Linear)(d_in, d_out, bias=bias)
            nn.init.normal_(lin.weight, 0.0, init_std) if init_std > 0 else nn.init.zeros_(lin.weight)
            if bias:
                nn.init.zeros_(lin.bias)
            return lin

        action = FeatureAction(
            on_input=lambda x: apply_matrices(self.gen_in, x, feature_dim),
            on_output=lambda y: apply_matrices(self.gen_out, y, feature_dim),
            kind="lie",
        )
        super().__init__(equivariant, free, action)
        self.feature_dim = feature_dim
        self._set_generators(gen_in, gen_out)
        self.n_lie = gen_in.shape[0] if n_lie is None else n_lie
        self._equivariant_matrix = equivariant_matrix
        self._moments: tuple[Tensor, Tensor, int] | None = None
        self._fused_equivariant: Tensor | None = None  # f_eq's [d_out, d_in] matrix, last training forward
        self._free_sq: Tensor | None = None  # ||W x + b||^2 of the last input, from its norm penalty
        object.__setattr__(self, "_moment_source", None)

    def _set_generators(self, gen_in: Tensor, gen_out: Tensor) -> None:
        """Keep ``(A^T stacked [G d_in, d_in], B stacked [G d_out, d_out])`` sparse: ``W A`` and ``B W`` then cost
        ``O(nnz d)``, not ``O(d^3)``."""
        (n_gen, d_in, _), d_out = gen_in.shape, gen_out.shape[-1]
        self._sparse = (
            gen_in.to(torch.float64).transpose(1, 2).reshape(n_gen * d_in, d_in).to_sparse(),
            gen_out.to(torch.float64).reshape(n_gen * d_out, d_out).to_sparse(),
        )
        self._sparse_generators: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    @property
    def gen_in(self) -> Tensor:
        """``[G, d_in, d_in]`` the input generators, dense (float64)."""
        d_in = self._sparse[0].shape[1]
        return self._sparse[0].to_dense().view(-1, d_in, d_in).transpose(1, 2)

    @property
    def gen_out(self) -> Tensor:
        """``[G, d_out, d_out]`` the output generators, dense (float64)."""
        d_out = self._sparse[1].shape[1]
        return self._sparse[1].to_dense().view(-1, d_out, d_out)

    def share_moments(self, source: DenseRelaxedLinear | None) -> None:
        """Reuse ``source``'s input statistics whenever both layers last saw the same tensor (e.g. the
        VN-LeakyReLU direction map next to its feature map); ``None`` stops sharing.

        ``source`` is kept as a plain reference, not registered as a submodule: its parameters must appear
        once in the model (state dict, optimiser, ``functional_call``), under its own name.
        """
        object.__setattr__(self, "_moment_source", source)

    def forward(self, x: Tensor, *condition: Tensor) -> Tensor:
        """``x -> f_eq(x, *condition) + theta W x`` in the layer's layout; ``condition`` (e.g. node attributes for a
        conditioned tensor product) goes to the equivariant map only, and rules out the fused forward."""
        if self.theta == 0.0:
            return self.equivariant(x, *condition)
        self._record(x)
        mix = self.mix
        if self._equivariant_matrix is None or condition:
            y_eq, w_x = self.equivariant(x, *condition), self.free(x)
            self._note_outputs(y_eq, w_x)
            if isinstance(mix, Tensor):
                return y_eq + mix * w_x
            return torch.add(y_eq, w_x, alpha=mix)
        equivariant = self._equivariant_matrix()  # [d_out, d_in] channels first, else [d_in, d_out]
        if self.training and self.record_input:
            self._fused_equivariant = (equivariant if self.feature_dim == 1 else equivariant.t()).detach()
        if self.feature_dim == 1:
            weight = equivariant + mix * self.free.weight  # [d_out, d_in]
            if self.free.bias is None:
                return torch.matmul(weight, x)
            return torch.baddbmm((mix * self.free.bias)[None, :, None], weight.expand(x.shape[0], -1, -1), x)
        y = x @ (equivariant + mix * self.free.weight.t())
        return y if self.free.bias is None else y + mix * self.free.bias

    def _record(self, x: Tensor) -> None:
        super()._record(x)
        self._moments = None
        self._fused_equivariant = None
        self._free_sq = None

    def activity_norms(self) -> tuple[Tensor, Tensor] | None:
        """From the input's moments (:func:`second_moment_norms`) after a fused forward, else as recorded. When
        the norm penalty ran on this input, its ``||W x + b||^2`` is reused and only ``||f_eq x||^2`` is computed
        (:meth:`equivariant_sq`)."""
        if self._fused_equivariant is None or self._last_input is None:
            return super().activity_norms()
        if self._free_sq is None:
            return second_moment_norms(
                self._fused_equivariant, self.free.weight, self.free.bias, self.moments()
            )
        with torch.no_grad():
            eq_sq = self.equivariant_sq(self.moments()[0])
        return eq_sq.clamp_min(0).sqrt(), self._free_sq.clamp_min(0).sqrt()

    def equivariant_sq(self, s: Tensor) -> Tensor:
        """``sum_x ||f_eq x||^2 = tr(E S E^T)`` from the input's second moment ``S [d_in, d_in]`` after a fused
        forward (``E [d_out, d_in]``); a layer whose ``E`` has structure may do it cheaper."""
        e = self._fused_equivariant
        return ((e @ s) * e).sum()

    def use_published_layout(self) -> None:
        """Penalise with the published code's layout (:func:`~relaxbench.relax.lie.published_layout_generators`
        on the input side) instead of the Lie derivative: the ``relaxed_published_lie`` ablation. Finite
        generators (the inversion) are dropped: the published penalty had none."""
        self._set_generators(
            published_layout_generators(self.gen_in[: self.n_lie]), self.gen_out[: self.n_lie]
        )

    def moments(self) -> tuple[Tensor, Tensor, int]:
        """``(S [d_in, d_in], m [d_in], n)`` of the last input: second moment, sum, number of vectors."""
        if self._moments is None:
            source = self._moment_source
            if source is not None and _same_tensor(source._last_input, self._last_input):
                self._moments = source.moments()
            elif self.feature_dim == 1:
                x = self._last_input  # [B, d_in, P]
                self._moments = (torch.einsum("bip,bjp->ij", x, x), x.sum((0, 2)), x.shape[0] * x.shape[2])
            else:
                x = self._last_input.reshape(-1, self._last_input.shape[-1])
                self._moments = (x.t() @ x, x.sum(0), x.shape[0])
        return self._moments

    def sparse_generators(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(A^T stacked [G d_in, d_in], B stacked [G d_out, d_out])`` as sparse matrices of ``like``'s dtype and
        device (cached). Generators are sparse (block diagonal for irreps), so ``W A`` and ``B W`` cost
        ``O(nnz d)`` instead of ``O(d^3)``."""
        key = (like.dtype, like.device)
        if key not in self._sparse_generators:
            self._sparse_generators[key] = tuple(g.to(like) for g in self._sparse)
        return self._sparse_generators[key]

    def penalty_terms(self, lie: bool = True, norm: bool = True) -> tuple[Tensor, Tensor]:
        weight = self.free.weight  # [d_out, d_in]
        d_out, d_in = weight.shape
        zero = weight.new_zeros(())
        if self._last_input is None or not (lie or norm):
            return zero, zero
        lie_rows = None
        if lie:
            gin_t, gout = self.sparse_generators(weight)
            g = gin_t.shape[0] // d_in
            w_a = torch.sparse.mm(gin_t, weight.t()).view(g, d_in, d_out).transpose(1, 2)  # W A
            b_w = torch.sparse.mm(gout, weight).view(g, d_out, d_in)  # B W
            lie_rows = (w_a - b_w).reshape(g * d_out, d_in)
        batch = self._last_input.shape[0]
        ld, sq = second_moment_penalty(
            lie_rows, weight if norm else None, self.free.bias, self.moments(), batch
        )
        self._free_sq = sq.detach() * batch if norm else None
        return ld, sq


class _ChannelsFirstLinear(nn.Linear):
    """``nn.Linear`` on axis 1: ``x [B, d_in, P] -> W x + b [B, d_out, P]``."""

    def forward(self, x: Tensor) -> Tensor:
        y = torch.matmul(self.weight, x)
        return y if self.bias is None else y + self.bias[:, None]


def _same_tensor(a: Tensor | None, b: Tensor | None) -> bool:
    return (
        a is not None
        and b is not None
        and a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
    )
