"""E(n)-equivariant GNN (Satorras, Hoogeboom, Welling 2021), the velocity-aware variant of its N-body experiment.

Takes a batch ``loc [B, N, 3]``, ``vel [B, N, 3]``, ``charges [B, N, 1]`` (a fully connected graph of the ``N``
particles of each example) and returns predicted positions ``[B, N, 3]``. Representations: node features ``h``
are invariant scalars (``hidden``), coordinates ``x`` and velocities ``v`` are Cartesian vectors (e3nn ``1o``),
edge attributes ``a_ij = (q_i q_j, |x_i - x_j|^2 at the input)`` are invariant. Per layer::

    m_ij  = phi_e(h_i, h_j, |x_i - x_j|^2, a_ij)
    agg_i = mean_j (x_i - x_j) phi_x(m_ij)              (vector)
    vel_i = phi_v(h_i) v_i                               (vector)
    x_i  <- x_i + U([x_i - xbar, v_i, agg_i, vel_i])      U = agg_i + vel_i in EGNN
    h_i  <- h_i + phi_h(h_i, sum_j m_ij)

with ``h^0 = Linear(|v_i|)`` and the output ``x^L``. It is equivariant to rotations, translations and particle
permutations; velocities are not updated (as in EGNN).

Relaxation (our design; the paper relaxes SEGNN, not EGNN): the coordinate update ``U`` is the equivariant
linear map ``sum_c a_c u_c`` with fixed ``a = (0, 0, 1, 1)`` on the per-particle vector channels
``u = [x_i - xbar, v_i, agg_i, vel_i]`` (``xbar``: mean over the particles). A relaxed model adds
``theta * W u`` with a dense ``W: R^12 -> R^3`` shared by all particles (init ``N(0, 1e-4)``), so the free branch
sees the raw centred state and the equivariant messages; it breaks rotations only (translations and
permutations stay exact). The Lie-derivative penalty uses the so(3) generators acting on each of the four
vectors, and the forward is fused into one ``[12, 3]`` matrix (:mod:`relaxbench.families.vectors`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from relaxbench.families import vectors
from relaxbench.families.blocks import fully_connected_edges

__all__ = ["EGNN", "FAMILY", "TASK_KINDS", "build"]

FAMILY = "gnn"
#: task kinds this model supports -> the group it respects on them
TASK_KINDS = {"nbody": "E(3) x permutations"}


def _mlp(d_in: int, hidden: int, d_out: int, final_act: bool = False) -> nn.Sequential:
    layers = [nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, d_out)]
    return nn.Sequential(*layers, nn.SiLU()) if final_act else nn.Sequential(*layers)


class EGNNLayer(nn.Module):
    """One E_GCL layer with velocity: ``(h [B, N, H], x [B, N, 3], v, a_ij [B, E, 2]) -> (h, x)``."""

    def __init__(self, hidden: int, n_edge_attr: int, relaxed: bool, free_init_std: float) -> None:
        super().__init__()
        self.phi_e = _mlp(2 * hidden + 1 + n_edge_attr, hidden, hidden, final_act=True)
        self.phi_x = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1, bias=False))
        nn.init.xavier_uniform_(self.phi_x[-1].weight, gain=0.001)
        self.phi_v = _mlp(hidden, hidden, 1)
        self.phi_h = _mlp(2 * hidden, hidden, hidden)
        self.update = vectors.relax(vectors.VectorMix([0, 0, 1, 1], [False] * 4), relaxed, free_init_std)

    def forward(self, h: Tensor, x: Tensor, v: Tensor, edge_attr: Tensor, receivers: Tensor, senders: Tensor):
        b, n, _ = x.shape
        rel = x[:, receivers] - x[:, senders]  # [B, E, 3], x_i - x_j
        dist2 = rel.pow(2).sum(-1, keepdim=True)
        m = self.phi_e(torch.cat([h[:, receivers], h[:, senders], dist2, edge_attr], dim=-1))  # [B, E, H]
        agg = (rel * self.phi_x(m)).view(b, n, n - 1, 3).mean(2)
        vel = self.phi_v(h) * v
        centred = x - x.mean(dim=1, keepdim=True)
        x = x + self.update(torch.cat([centred, v, agg, vel], dim=-1))
        h = h + self.phi_h(torch.cat([h, m.view(b, n, n - 1, -1).sum(2)], dim=-1))
        return h, x


class EGNN(nn.Module):
    """EGNN for the N-body task: ``{loc, vel, charges} -> positions [B, N, 3]`` (see module docstring)."""

    def __init__(
        self, n_particles: int, hidden: int, layers: int, relaxed: bool, free_init_std: float
    ) -> None:
        super().__init__()
        receivers, senders = fully_connected_edges(n_particles)
        self.register_buffer("receivers", receivers, persistent=False)
        self.register_buffer("senders", senders, persistent=False)
        self.embed = nn.Linear(1, hidden)
        self.layers = nn.ModuleList(EGNNLayer(hidden, 2, relaxed, free_init_std) for _ in range(layers))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        x, v, q = batch["loc"], batch["vel"], batch["charges"]
        rel = x[:, self.receivers] - x[:, self.senders]
        edge_attr = torch.cat(
            [q[:, self.receivers] * q[:, self.senders], rel.pow(2).sum(-1, keepdim=True)], -1
        )
        h = self.embed(v.norm(dim=-1, keepdim=True))
        for layer in self.layers:
            h, x = layer(h, x, v, edge_attr, self.receivers, self.senders)
        return x


def build(
    spec: dict, relaxed: bool = False, hidden: int = 64, layers: int = 4, free_init_std: float = 1e-4
) -> EGNN:
    """EGNN for an ``nbody`` task spec. The paper scale (4 layers, 64 hidden) is cheap enough for a CPU."""
    return EGNN(spec["n_particles"], hidden, layers, relaxed, free_init_std)
