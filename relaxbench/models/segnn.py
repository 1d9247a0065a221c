"""Steerable E(3)-equivariant GNN (Brandstetter et al. 2022) for the N-body task, from e3nn pieces.

Takes a batch ``loc [B, N, 3]``, ``vel [B, N, 3]``, ``charges [B, N, 1]`` (a fully connected graph of the ``N``
particles) and returns predicted positions ``loc + dx``, ``[B, N, 3]``. Representations (e3nn irreps, l=1 in
xyz order):

- node input ``2x1o + 1x0e``: position centred on the particles' mean, velocity, speed ``|v|``. (The published
  code averages over x, y, z instead of over particles, which breaks translation equivariance.)
- edge attribute ``a_ij = Y(x_i - x_j)``, spherical harmonics up to ``l_max`` (``component`` normalisation, so
  each component is O(1)); node attribute ``a_i = (mean_j Y(x_i - x_j) + Y(v_i)) / 2`` (SEGNN sums the two; the
  half keeps the attribute at the scale e3nn's tensor-product normalisation assumes, otherwise every layer
  multiplies the feature scale by about 2-4); extra message scalars ``2x0e``: ``|x_i - x_j|`` and ``q_i q_j``.
- hidden features: ``n x (0e + 1o + 2e + ...)`` up to ``l_max``, with ``n`` chosen so that a steerable linear
  layer has as many weights as a ``hidden x hidden`` scalar one (SEGNN's weight balancing: 32 copies for
  ``hidden = 64``, ``l_max = 1``).

A steerable linear layer is a tensor product of its input with the attribute, ``TP_w(x, a) + b`` (``b`` on the
scalar outputs), optionally followed by a gate (SiLU on scalars, sigmoid gates on l > 0). Per message-passing
layer: messages ``m_ij = L2(L1([h_i, h_j, extra_ij], a_ij), a_ij)`` (both gated), summed over ``j``; update
``h_i <- h_i + U2(U1([h_i, sum_j m_ij], a_i), a_i)`` (``U1`` gated). Head: a gated layer and a linear layer to
``1x1o`` (the displacement ``dx``), both conditioned on ``a_i``.

Relaxation (the paper's SEGNN free branch): both update layers ``U1`` and ``U2`` of every message-passing
layer get ``theta * W x``, a bias-free dense ``Linear(dim_in -> dim_out)`` on the flattened irreps vector
(before the gate), initialised ``N(0, 1e-4)`` and penalised with e3nn's so(3) generators
(:func:`relaxbench.families.irreps.relax`).
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import Tensor, nn

from relaxbench.families import irreps
from relaxbench.families.blocks import fully_connected_edges

__all__ = ["FAMILY", "TASK_KINDS", "SEGNN", "SteerableLinear", "SwishGate", "balanced_hidden_irreps", "build"]

FAMILY = "gnn"
#: task kinds this model supports -> the group it respects on them
TASK_KINDS = {"nbody": "E(3) x permutations"}

INPUT_IRREPS = o3.Irreps("2x1o + 1x0e")
MESSAGE_EXTRA_IRREPS = o3.Irreps("2x0e")
OUTPUT_IRREPS = o3.Irreps("1x1o")


def _tp_weight_count(irreps1: o3.Irreps, irreps2: o3.Irreps, irreps_out: o3.Irreps) -> int:
    """Number of weights of a fully connected tensor product ``irreps1 x irreps2 -> irreps_out``."""
    return sum(
        m1 * m2 * m3
        for m1, ir1 in irreps1
        for m2, ir2 in irreps2
        for m3, ir3 in irreps_out
        if ir3 in ir1 * ir2
    )


def balanced_hidden_irreps(hidden: int, l_max: int) -> o3.Irreps:
    """``n x (0e + 1o + ... + l_max)`` whose steerable layer ``TP(h, Y) -> h`` has at least ``hidden^2`` weights."""
    unit = o3.Irreps.spherical_harmonics(l_max)
    n = math.ceil(hidden / math.sqrt(_tp_weight_count(unit, unit, unit)))
    return (unit * n).sort().irreps.simplify()


class _TensorProductBias(nn.Module):
    """``TP_w(x, a) + b``: ``x [..., irreps_in.dim]``, ``a [..., irreps_attr.dim]`` -> ``[..., irreps_out.dim]``.

    ``TP`` is e3nn's fully connected tensor product (shared weights); ``b`` acts on the ``0e`` outputs only.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_attr: o3.Irreps, irreps_out: o3.Irreps) -> None:
        super().__init__()
        self.irreps_in, self.irreps_out = irreps_in, irreps_out
        self.tp = o3.FullyConnectedTensorProduct(irreps_in, irreps_attr, irreps_out)
        scalar_index = [
            i
            for (mul, ir), s in zip(irreps_out, irreps_out.slices())
            if ir == o3.Irrep("0e")
            for i in range(s.start, s.stop)
        ]
        self.register_buffer("scalar_index", torch.tensor(scalar_index, dtype=torch.long), persistent=False)
        self.bias = nn.Parameter(torch.zeros(len(scalar_index))) if scalar_index else None
        self.dim_out = irreps_out.dim

    def forward(self, x: Tensor, attr: Tensor) -> Tensor:
        y = self.tp(x, attr)
        if self.bias is None:
            return y
        return y + y.new_zeros(self.dim_out).index_copy(0, self.scalar_index, self.bias)


class SwishGate(nn.Module):
    """The gated nonlinearity: ``scalars + gates + gated -> scalars + gated``, ``[..., dim_in] -> [..., dim_out]``.

    SiLU on the ``0e`` scalars; every ``l > 0`` irrep of ``gated`` is multiplied by the sigmoid of its own gate
    scalar, which keeps it equivariant.
    """

    def __init__(self, irreps: o3.Irreps) -> None:
        super().__init__()
        irreps = o3.Irreps(irreps)
        scalars = o3.Irreps([(m, ir) for m, ir in irreps if ir.l == 0])
        if any(ir != o3.Irrep("0e") for _, ir in scalars):
            raise ValueError(f"the gate applies SiLU to even scalars only, got {scalars}")
        self.gated = o3.Irreps([(m, ir) for m, ir in irreps if ir.l > 0])
        self.n_scalars, self.n_gates = scalars.dim, self.gated.num_irreps
        self.irreps_in = scalars + o3.Irreps(f"{self.n_gates}x0e") + self.gated
        self.irreps_out = scalars + self.gated

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        gates = torch.sigmoid(x[..., self.n_scalars : self.n_scalars + self.n_gates])
        out, start, gate = [nn.functional.silu(x[..., : self.n_scalars])], self.n_scalars + self.n_gates, 0
        for mul, ir in self.gated:
            block = x[..., start : start + mul * ir.dim].reshape(*lead, mul, ir.dim)
            out.append((block * gates[..., gate : gate + mul, None]).reshape(*lead, mul * ir.dim))
            start, gate = start + mul * ir.dim, gate + mul
        return torch.cat(out, dim=-1)


class SteerableLinear(nn.Module):
    """A steerable (attribute-conditioned) linear layer, gated or not, relaxable.

    ``x [..., irreps_in.dim]``, ``attr [..., irreps_attr.dim]`` -> ``[..., irreps_out.dim]``. Gated: the tensor
    product produces ``scalars + gates + gated`` and :class:`SwishGate` returns ``irreps_out``. Relaxed: the
    tensor product (before the gate) gets a free branch.
    """

    def __init__(
        self,
        irreps_in,
        irreps_attr,
        irreps_out,
        gated: bool,
        relaxed: bool = False,
        free_init_std: float = 1e-4,
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.gate = SwishGate(irreps_out) if gated else None
        self.irreps_out = (
            o3.Irreps(irreps_out) if self.gate is None else self.gate.irreps_out
        )  # scalars first
        pre_gate = self.irreps_out if self.gate is None else self.gate.irreps_in
        self.linear = irreps.relax(
            _TensorProductBias(self.irreps_in, o3.Irreps(irreps_attr), pre_gate),
            relaxed,
            init_std=free_init_std,
        )

    def forward(self, x: Tensor, attr: Tensor) -> Tensor:
        y = self.linear(x, attr)
        return y if self.gate is None else self.gate(y)


class SEGNNLayer(nn.Module):
    """Message passing on the fully connected particle graph: ``h [B, N, hidden.dim] -> [B, N, hidden.dim]``."""

    def __init__(
        self, hidden: o3.Irreps, irreps_attr: o3.Irreps, relaxed: bool, free_init_std: float
    ) -> None:
        super().__init__()
        self.message1 = SteerableLinear(
            hidden + hidden + MESSAGE_EXTRA_IRREPS, irreps_attr, hidden, gated=True
        )
        self.message2 = SteerableLinear(hidden, irreps_attr, hidden, gated=True)
        self.update1 = SteerableLinear(hidden + hidden, irreps_attr, hidden, True, relaxed, free_init_std)
        self.update2 = SteerableLinear(hidden, irreps_attr, hidden, False, relaxed, free_init_std)

    def forward(
        self,
        h: Tensor,
        edge_attr: Tensor,
        node_attr: Tensor,
        extra: Tensor,
        receivers: Tensor,
        senders: Tensor,
    ) -> Tensor:
        b, n, _ = h.shape
        m = self.message1(torch.cat([h[:, receivers], h[:, senders], extra], dim=-1), edge_attr)
        m = self.message2(m, edge_attr)  # [B, E, hidden.dim]
        agg = m.view(b, n, n - 1, -1).sum(2)
        return h + self.update2(self.update1(torch.cat([h, agg], dim=-1), node_attr), node_attr)


class SEGNN(nn.Module):
    """SEGNN for the N-body task: ``{loc, vel, charges} -> positions [B, N, 3]`` (see module docstring)."""

    def __init__(
        self, n_particles: int, hidden: int, layers: int, l_max: int, relaxed: bool, free_init_std: float
    ) -> None:
        super().__init__()
        if l_max < 1:
            raise ValueError(f"SEGNN needs l_max >= 1 to carry vectors, got l_max={l_max}")
        receivers, senders = fully_connected_edges(n_particles)
        self.register_buffer("receivers", receivers, persistent=False)
        self.register_buffer("senders", senders, persistent=False)
        self.irreps_attr = o3.Irreps.spherical_harmonics(l_max)
        self.irreps_hidden = balanced_hidden_irreps(hidden, l_max)
        self.embed = SteerableLinear(INPUT_IRREPS, self.irreps_attr, self.irreps_hidden, gated=False)
        self.layers = nn.ModuleList(
            SEGNNLayer(self.irreps_hidden, self.irreps_attr, relaxed, free_init_std) for _ in range(layers)
        )
        self.head1 = SteerableLinear(self.irreps_hidden, self.irreps_attr, self.irreps_hidden, gated=True)
        self.head2 = SteerableLinear(self.irreps_hidden, self.irreps_attr, OUTPUT_IRREPS, gated=False)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        x, v, q = batch["loc"], batch["vel"], batch["charges"]
        b, n, _ = x.shape
        rel = x[:, self.receivers] - x[:, self.senders]  # [B, E, 3]
        edge_attr = o3.spherical_harmonics(self.irreps_attr, rel, normalize=True, normalization="component")
        node_attr = 0.5 * (
            edge_attr.view(b, n, n - 1, -1).mean(2)
            + o3.spherical_harmonics(self.irreps_attr, v, normalize=True, normalization="component")
        )
        extra = torch.cat([rel.norm(dim=-1, keepdim=True), q[:, self.receivers] * q[:, self.senders]], dim=-1)
        features = torch.cat([x - x.mean(dim=1, keepdim=True), v, v.norm(dim=-1, keepdim=True)], dim=-1)
        h = self.embed(features, node_attr)
        for layer in self.layers:
            h = layer(h, edge_attr, node_attr, extra, self.receivers, self.senders)
        return x + self.head2(self.head1(h, node_attr), node_attr)


def build(
    spec: dict,
    relaxed: bool = False,
    hidden: int = 16,
    layers: int = 2,
    l_max: int = 1,
    free_init_std: float = 1e-4,
) -> SEGNN:
    """SEGNN for an ``nbody`` task spec.

    CPU-scale defaults (``hidden = 16`` scalar-equivalent, i.e. ``8x0e + 8x1o``; 2 layers); the paper's scale is
    ``hidden = 64, layers = 4, l_max = 1``.
    """
    return SEGNN(spec["n_particles"], hidden, layers, l_max, relaxed, free_init_std)
