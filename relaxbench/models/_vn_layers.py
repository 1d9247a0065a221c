"""Vector Neuron layers (Deng et al., ICCV 2021) and their relaxed linear maps.

Representation: a VN feature is a list of 3D vectors per point, ``x [B, C, 3, *pts]`` (``*pts`` is ``N`` or
``N, k``); a rotation ``R`` acts on the xyz axis (axis 2), ``x -> R x``, the same on every channel and point.
Every layer here maps such features to such features (``C_in -> C_out``) and commutes with that action;
:class:`VNStdFeature` returns invariant features.

The relaxation (as in the published VN code): next to every VN linear map ``x -> W x`` (``W [C_out, C_in]``,
mixing channels only) a free dense map of each point's flattened ``(channel, xyz)`` vector,
``Linear(3 C_in -> 3 C_out)`` with bias, zero-initialised as in the published VN-PointNet. The flattening
is channel-major (index ``3 c + i`` for channel ``c``, coordinate ``i``), which is simply ``x.reshape(B,
3 C, P)``. In that layout the VN map is ``kron(W, I_3)`` and the so(3) generators act as
``kron(I_C, L_a)``; a dense map commutes with all three exactly when it is ``kron(M, I_3)`` for some ``M``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from relaxbench.relax.dense import second_moment_penalty
from relaxbench.relax.lie import make_lie_action
from relaxbench.relax.relaxed import RelaxedLayer

__all__ = [
    "EPS",
    "RelaxedVNLinear",
    "VNBatchNorm",
    "VNDense",
    "VNLinear",
    "VNLinearLeakyReLU",
    "VNMaxPool",
    "VNStdFeature",
    "graph_feature",
    "knn",
    "so3_generators",
    "vn_generators",
    "vn_linear",
    "vn_pool",
]

EPS = 1e-6


def so3_generators(dtype: torch.dtype = torch.float64) -> Tensor:
    """``[3, 3, 3]``: ``L_a v = e_a x v`` (the infinitesimal rotations about x, y, z)."""
    eps = torch.zeros(3, 3, 3, dtype=dtype)
    for a, b, c in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
        eps[a, b, c], eps[a, c, b] = 1.0, -1.0
    return -eps  # (L_a)_{bc} = -eps_{abc}


def vn_generators(channels: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``[3, 3C, 3C]``: the generators ``kron(I_C, L_a)`` on channel-major flattened VN features."""
    eye = torch.eye(channels, dtype=dtype)
    return torch.stack([torch.kron(eye, gen) for gen in so3_generators(dtype)])


class VNLinear(nn.Module):
    """``y_o = sum_c W_oc x_c``: mixes channels, never coordinates. ``[B, C_in, 3, *pts] -> [B, C_out, 3, *pts]``.

    Initialised like ``nn.Linear(C_in, C_out, bias=False)`` (the published ``map_to_feat``); no bias, which
    would break equivariance.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.c_in, self.c_out = c_in, c_out
        self.weight = nn.Parameter(torch.empty(c_out, c_in))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        b, pts = x.shape[0], x.shape[3:]
        return torch.matmul(self.weight, x.reshape(b, self.c_in, -1)).view(b, self.c_out, 3, *pts)

    def matrix(self) -> Tensor:
        """``kron(W, I_3) [3 C_out, 3 C_in]``: the map on channel-major flattened features."""
        return torch.kron(self.weight, torch.eye(3, dtype=self.weight.dtype, device=self.weight.device))

    def extra_repr(self) -> str:
        return f"{self.c_in}x3 -> {self.c_out}x3"


class VNDense(nn.Module):
    """The free map: a dense ``Linear(3 C_in -> 3 C_out)`` on each point's channel-major ``(c, xyz)`` vector.

    Takes and returns VN-shaped tensors ``[B, C_in, 3, *pts] -> [B, C_out, 3, *pts]``, but mixes coordinates
    freely (not equivariant unless ``weight = kron(M, I_3)`` and ``bias = 0``). ``weight [3 C_out, 3 C_in]``
    starts at N(0, ``init_std``) (zero by default, as published); ``bias [3 C_out]`` at zero.
    """

    def __init__(self, c_in: int, c_out: int, init_std: float = 0.0) -> None:
        super().__init__()
        self.c_in, self.c_out = c_in, c_out
        self.weight = nn.Parameter(torch.zeros(3 * c_out, 3 * c_in))
        self.bias = nn.Parameter(torch.zeros(3 * c_out))
        if init_std > 0:
            nn.init.normal_(self.weight, 0.0, init_std)

    def forward(self, x: Tensor) -> Tensor:
        b, pts = x.shape[0], x.shape[3:]
        y = torch.matmul(self.weight, x.reshape(b, 3 * self.c_in, -1)) + self.bias[:, None]
        return y.view(b, self.c_out, 3, *pts)


class RelaxedVNLinear(RelaxedLayer):
    """``f(x) = W x + theta * (W_free x + b)`` on VN features ``[B, C_in, 3, *pts] -> [B, C_out, 3, *pts]``.

    - theta = 0: the :class:`VNLinear` alone (bit for bit the plain layer).
    - theta > 0: one matmul with the fused weight ``kron(W, I_3) + theta W_free`` on the
      ``[B, 3 C_in, P]`` view of the input.
    - Penalties (:meth:`penalty_terms`) from the input's second moment ``S = sum_points x x^T``
      (``[3 C_in, 3 C_in]``): ``ld = sum_a tr(L_a S L_a^T) / B`` with the Lie derivative
      ``L_a = W_free kron(I, L_a) - kron(I, L_a) W_free`` (bias excluded), ``norm = ||W_free x + b||^2 / B``.
      The generators are applied to the 3x3 blocks of ``W_free`` (never as dense matrices); the quadratic
      forms are :func:`relaxbench.relax.dense.second_moment_penalty` (one ``[4 * 3 C_out, 3 C_in] @ S``
      product, shared with the gradient).

    ``share_moments(other)`` lets a map that reads the same input (the VN-LeakyReLU direction map next to
    its feature map) reuse the other's ``S`` instead of recomputing it.
    """

    def __init__(self, equivariant: VNLinear, init_std: float = 0.0) -> None:
        c_in, c_out = equivariant.c_in, equivariant.c_out
        gens = so3_generators()
        super().__init__(
            equivariant,
            lambda: VNDense(c_in, c_out, init_std),
            make_lie_action(gens, gens, dim_in=2, dim_out=2),
        )
        self.register_buffer("gens", gens, persistent=False)
        self._moments: tuple[Tensor, Tensor, int] | None = None
        object.__setattr__(self, "_moment_source", None)

    def share_moments(self, source: RelaxedVNLinear) -> None:
        """Reuse ``source``'s input statistics whenever both layers last saw the same tensor.

        ``source`` is kept as a plain reference, not registered as a submodule: its parameters must appear
        once in the model (state dict, optimiser, ``functional_call``), under its own name.
        """
        object.__setattr__(self, "_moment_source", source)

    def forward(self, x: Tensor) -> Tensor:
        if self.theta == 0.0:
            return self.equivariant(x)
        self._record(x)
        return self._fused(x)

    def _record(self, x: Tensor) -> None:
        super()._record(x)
        self._moments = None

    def _fused(self, x: Tensor) -> Tensor:
        b, pts = x.shape[0], x.shape[3:]
        weight = self.equivariant.matrix() + self.theta * self.free.weight
        y = torch.baddbmm(
            (self.theta * self.free.bias)[None, :, None],
            weight.expand(b, -1, -1),
            x.reshape(b, weight.shape[1], -1),
        )
        return y.view(b, self.equivariant.c_out, 3, *pts)

    def moments(self) -> tuple[Tensor, Tensor, int]:
        """``(S [3 C_in, 3 C_in], m [3 C_in], n)``: second moment and sum of the last input's point vectors."""
        if self._moments is None:
            source = self._moment_source
            if (
                source is not None
                and source._last_input is not None
                and _same_tensor(source._last_input, self._last_input)
            ):
                self._moments = source.moments()
            else:
                x = self._last_input
                flat = x.reshape(x.shape[0], 3 * x.shape[1], -1)  # [B, 3C, P]
                self._moments = (
                    torch.einsum("bip,bjp->ij", flat, flat),
                    flat.sum((0, 2)),
                    flat.shape[0] * flat.shape[2],
                )
        return self._moments

    def penalty_terms(self, lie: bool = True, norm: bool = True) -> tuple[Tensor, Tensor]:
        weight = self.free.weight  # [3 C_out, 3 C_in]
        if self._last_input is None or not (lie or norm):
            zero = weight.new_zeros(())
            return zero, zero
        lie_rows = None
        if lie:
            c_out, c_in = self.equivariant.c_out, self.equivariant.c_in
            blocks = weight.view(c_out, 3, c_in, 3)
            gens = self.gens.to(weight.dtype)
            # Lie derivatives L_a = W kron(I, L_a) - kron(I, L_a) W, computed blockwise: [3 x 3 C_out, 3 C_in]
            lie_rows = (
                torch.einsum("oicj,ajk->aoick", blocks, gens) - torch.einsum("aij,ojck->aoick", gens, blocks)
            ).reshape(9 * c_out, 3 * c_in)
        return second_moment_penalty(
            lie_rows, weight if norm else None, self.free.bias, self.moments(), self._last_input.shape[0]
        )


def _same_tensor(a: Tensor, b: Tensor | None) -> bool:
    return (
        b is not None
        and a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
    )


def vn_linear(relaxed: bool, c_in: int, c_out: int, init_std: float = 0.0) -> VNLinear | RelaxedVNLinear:
    """A :class:`VNLinear` ``C_in -> C_out``, wrapped with a free dense branch when ``relaxed``."""
    linear = VNLinear(c_in, c_out)
    return RelaxedVNLinear(linear, init_std) if relaxed else linear


class VNBatchNorm(nn.Module):
    """Batch norm of the vector lengths: ``x -> x / |x| * BN(|x|)`` per channel. ``[B, C, 3, *pts]`` -> same.

    ``|x| = sqrt(sum_xyz x^2 + EPS)`` (the ``EPS`` keeps gradients finite at zero vectors); statistics over
    the batch and all points (one ``BatchNorm1d`` on ``[B, C, P]`` serves every ``*pts`` shape).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, x: Tensor) -> Tensor:
        norm = torch.sqrt((x * x).sum(2) + EPS)  # [B, C, *pts]
        norm_bn = self.bn(norm.reshape(norm.shape[0], norm.shape[1], -1)).view(norm.shape)
        return x * (norm_bn / norm).unsqueeze(2)


def _leaky(p: Tensor, d: Tensor, negative_slope: float) -> Tensor:
    """VN-LeakyReLU: where ``<p, d> < 0``, remove ``(1 - negative_slope)`` of ``p``'s component along ``d``.

    The published form ``a p + (1 - a) [p if <p, d> >= 0 else p - <p, d> / (|d|^2 + EPS) d]`` written as one
    multiply-add on the full tensor: ``p - (1 - a) min(<p, d>, 0) / (|d|^2 + EPS) d``.
    """
    dot = (p * d).sum(2, keepdim=True)
    coef = (1 - negative_slope) * dot.clamp(max=0) / ((d * d).sum(2, keepdim=True) + EPS)
    return torch.addcmul(p, coef, d, value=-1)


class VNLinearLeakyReLU(nn.Module):
    """Feature map, VN batch norm, VN-LeakyReLU. ``[B, C_in, 3, *pts] -> [B, C_out, 3, *pts]``.

    ``p = BN(W x)`` and the direction ``d = U x`` (``U [C_out or 1, C_in]``, one shared direction when
    ``share_nonlinearity``), then ``p`` loses its component along ``d`` where ``<p, d> < 0`` (scaled by
    ``1 - negative_slope``). Relaxed: ``W`` and ``U`` each get their own free map (each penalised once);
    ``U`` reuses ``W``'s input statistics.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        relaxed: bool = False,
        share_nonlinearity: bool = False,
        negative_slope: float = 0.2,
        free_init_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.map_to_feat = vn_linear(relaxed, c_in, c_out, free_init_std)
        self.batchnorm = VNBatchNorm(c_out)
        self.map_to_dir = vn_linear(relaxed, c_in, 1 if share_nonlinearity else c_out, free_init_std)
        if relaxed:
            self.map_to_dir.share_moments(self.map_to_feat)

    def forward(self, x: Tensor) -> Tensor:
        p = self.batchnorm(self.map_to_feat(x))
        return _leaky(p, self.map_to_dir(x), self.negative_slope)


class VNMaxPool(nn.Module):
    """Per channel, the vector of the point (last axis) with the largest ``<x, d>``, ``d = U x``.

    ``[B, C, 3, *pts, M] -> [B, C, 3, *pts]``.
    """

    def __init__(self, channels: int, relaxed: bool = False, free_init_std: float = 0.0) -> None:
        super().__init__()
        self.map_to_dir = vn_linear(relaxed, channels, channels, free_init_std)

    def forward(self, x: Tensor) -> Tensor:
        dot = (x * self.map_to_dir(x)).sum(2, keepdim=True)  # [B, C, 1, *pts, M]
        idx = dot.argmax(-1, keepdim=True).expand(*x.shape[:-1], 1)
        return x.gather(-1, idx).squeeze(-1)


def vn_pool(kind: str, channels: int, relaxed: bool = False, free_init_std: float = 0.0) -> nn.Module:
    """Pooling over the last axis: ``"mean"`` or ``"max"`` (:class:`VNMaxPool`)."""
    if kind == "mean":
        return _MeanPool()
    if kind == "max":
        return VNMaxPool(channels, relaxed, free_init_std)
    raise ValueError(f"pooling must be 'mean' or 'max', got {kind!r}")


class _MeanPool(nn.Module):
    """Mean over the last axis: ``[B, C, 3, *pts, M] -> [B, C, 3, *pts]``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(-1)


class VNStdFeature(nn.Module):
    """Invariant features: coordinates of every vector in a learned equivariant frame.

    Two VN-LeakyReLU layers (``C -> C/2 -> C/4``) and a VN linear map to 3 vectors ``z [B, 3, 3, N]`` per
    point; returns ``x_std[b, c, k, n] = <x[b, c, :, n], z[b, k, :, n]>``, shape ``[B, C, 3, N]`` (invariant
    under every rotation applied to ``x``, since ``z`` rotates with it).
    """

    def __init__(
        self, channels: int, relaxed: bool = False, negative_slope: float = 0.2, free_init_std: float = 0.0
    ) -> None:
        super().__init__()
        self.vn1 = VNLinearLeakyReLU(
            channels, channels // 2, relaxed, negative_slope=negative_slope, free_init_std=free_init_std
        )
        self.vn2 = VNLinearLeakyReLU(
            channels // 2, channels // 4, relaxed, negative_slope=negative_slope, free_init_std=free_init_std
        )
        self.vn_lin = vn_linear(relaxed, channels // 4, 3, free_init_std)

    def forward(self, x: Tensor) -> Tensor:
        frame = self.vn_lin(self.vn2(self.vn1(x)))  # [B, 3 (frame vectors), 3 (xyz), N]
        return torch.einsum("bcin,bkin->bckn", x, frame)


def knn(points: Tensor, k: int) -> Tensor:
    """``[B, N, k]`` indices of the ``k`` nearest points (itself included) for ``points [B, N, D]``."""
    if k > points.shape[1]:
        raise ValueError(f"k={k} neighbours asked of {points.shape[1]} points")
    return torch.cdist(points, points).topk(k, dim=-1, largest=False).indices


def graph_feature(x: Tensor, k: int, cross: bool = False, idx: Tensor | None = None) -> Tensor:
    """Edge features of the k-nearest-neighbour graph. ``[B, C, 3, N] -> [B, (2 or 3) C, 3, N, k]``.

    For point ``i`` and neighbour ``j`` (neighbours by distance between the flattened features, or ``idx``):
    channels ``[x_j - x_i, x_i]``, and with ``cross`` also ``x_j x x_i`` (a pseudo-vector: it does not
    change sign under reflections, so a model using it is SO(3)- but not O(3)-equivariant).
    """
    b, c, _, n = x.shape
    per_point = x.permute(0, 3, 1, 2).reshape(b, n, 3 * c)  # [B, N, 3C], channel-major per point
    if idx is None:
        idx = knn(per_point, k)
    flat = (idx + n * torch.arange(b, device=x.device).view(b, 1, 1)).reshape(-1)
    neighbours = per_point.reshape(b * n, 3 * c)[flat].view(b, n, -1, c, 3)  # [B, N, k, C, 3]
    centre = per_point.view(b, n, 1, c, 3).expand_as(neighbours)
    parts = [neighbours - centre, centre]
    if cross:
        parts.append(torch.linalg.cross(neighbours, centre, dim=-1))
    return torch.cat(parts, dim=3).permute(0, 3, 4, 1, 2).contiguous()
