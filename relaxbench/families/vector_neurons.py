"""Vector Neuron layers (Deng et al., ICCV 2021) and their relaxed linear maps.

Representation: a VN feature is a list of 3D vectors per point, ``x [B, C, 3, *pts]`` (``*pts`` is ``N`` or
``N, k``); a rotation ``R`` acts on the xyz axis (axis 2), ``x -> R x``, the same on every channel and point.
Every layer here maps such features to such features (``C_in -> C_out``) and commutes with that action;
:class:`VNStdFeature` returns invariant features.

The relaxation (as in the published VN code): ``relax(VNLinear(c_in, c_out), relaxed)`` puts next to the VN
linear map ``x -> W x`` (``W [C_out, C_in]``, mixing channels only) a free dense map of each point's flattened
``(channel, xyz)`` vector, ``Linear(3 C_in -> 3 C_out)`` with bias, zero-initialised as in the published
VN-PointNet. The flattening is channel-major (index ``3 c + i`` for channel ``c``, coordinate ``i``), which is
simply the ``[B, 3 C, P]`` view ``x.reshape(B, 3 C, P)``; the relaxed layer is a
:class:`~relaxbench.relax.dense.DenseRelaxedLinear` on that view (``feature_dim=1``: fused forward, penalties
from the second moment of the point vectors). In that layout the VN map is ``kron(W, I_3)`` and the so(3)
generators act as ``kron(I_C, L_a)`` (:func:`relaxbench.families.so3.stacked_vector_generators`); a dense map
commutes with all three exactly when it is ``kron(M, I_3)`` for some ``M``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from relaxbench.families.so3 import stacked_vector_generators
from relaxbench.relax.dense import DenseRelaxedLinear

__all__ = [
    "EPS",
    "VNBatchNorm",
    "VNLinear",
    "VNLinearLeakyReLU",
    "VNMaxPool",
    "VNStdFeature",
    "graph_feature",
    "knn",
    "relax",
    "vn_pool",
]

EPS = 1e-6


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


class _RelaxedVNLinear(DenseRelaxedLinear):
    """``f(x) = W x + theta * (W_free x + b)`` on VN features ``[B, C_in, 3, *pts] -> [B, C_out, 3, *pts]``.

    A :class:`~relaxbench.relax.dense.DenseRelaxedLinear` on the ``[B, 3 C_in, P]`` view of the features: at
    theta = 0 the :class:`VNLinear` alone (bit for bit the plain layer); at theta > 0 one matmul with the fused
    weight ``kron(W, I_3) + theta W_free``.
    """

    def __init__(self, equivariant: VNLinear, init_std: float) -> None:
        c_in, c_out = equivariant.c_in, equivariant.c_out
        super().__init__(
            equivariant,
            3 * c_in,
            3 * c_out,
            stacked_vector_generators(c_in),
            stacked_vector_generators(c_out),
            init_std=init_std,
            bias=True,
            equivariant_matrix=equivariant.matrix,
            feature_dim=1,
        )

    def equivariant_sq(self, s: Tensor) -> Tensor:
        """``tr(E S E^T)`` with ``E = kron(W, I_3)``: ``tr(W S' W^T)``, ``S'_ij = sum_k S_(3i+k)(3j+k)`` the
        ``[C_in, C_in]`` trace of each 3 x 3 block (27x fewer operations than the dense product)."""
        c = self.equivariant.c_in
        blocks = s.view(c, 3, c, 3).diagonal(dim1=1, dim2=3).sum(-1)  # [C_in, C_in]
        w = self.equivariant.weight.detach()
        return ((w @ blocks) * w).sum()

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if self.theta == 0.0:
            return self.equivariant(x)
        b, pts = x.shape[0], x.shape[3:]
        y = super().forward(x.reshape(b, self.equivariant.c_in * 3, -1))
        return y.view(b, self.equivariant.c_out, 3, *pts)


def relax(linear: VNLinear, relaxed: bool, init_std: float = 0.0) -> nn.Module:
    """``linear`` itself for a plain model, else ``linear(x) + theta * (W_free x + b)`` (see the module docstring).

    Takes and returns VN features ``[B, C_in, 3, *pts] -> [B, C_out, 3, *pts]``; ``W_free [3 C_out, 3 C_in]``
    starts ``N(0, init_std^2)`` (zero by default, as published) and ``b`` at zero.
    """
    return _RelaxedVNLinear(linear, init_std) if relaxed else linear


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
        self.map_to_feat = relax(VNLinear(c_in, c_out), relaxed, free_init_std)
        self.batchnorm = VNBatchNorm(c_out)
        self.map_to_dir = relax(VNLinear(c_in, 1 if share_nonlinearity else c_out), relaxed, free_init_std)
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
        self.map_to_dir = relax(VNLinear(channels, channels), relaxed, free_init_std)

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
        self.vn_lin = relax(VNLinear(channels // 4, 3), relaxed, free_init_std)

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
