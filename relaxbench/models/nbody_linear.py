"""The linear baseline of the N-body task: ``x + w v`` with one learned scalar ``w`` (a sanity model).

Takes ``loc [B, N, 3]`` and ``vel [B, N, 3]`` and returns predicted positions ``[B, N, 3]``; exactly equivariant
to rotations, translations and particle permutations. The EGNN paper reports 0.0819 MSE for it on the
charged N-body task. ``w`` starts at 0 (it is a time span, about 1 in the simulator's units for 10 frames).

Relaxed: ``x + w v + theta W [x - xbar, v]`` with a dense free ``W: R^6 -> R^3`` shared by the particles (the same
family as EGNN, :mod:`relaxbench.families.vectors`), i.e. the drift ``w v`` is the equivariant map
``kron((0, w), I_3)`` on the per-particle vector channels ``[x - xbar, v]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from relaxbench.families import vectors

__all__ = ["FAMILY", "TASK_KINDS", "LinearDrift", "build"]

FAMILY = "baseline"
#: task kinds this model supports -> the group it respects on them
TASK_KINDS = {"nbody": "E(3) x permutations"}


class LinearDrift(nn.Module):
    def __init__(self, relaxed: bool, free_init_std: float) -> None:
        super().__init__()
        self.drift = vectors.relax(vectors.VectorMix([0.0, 0.0], [False, True]), relaxed, free_init_std)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        x, v = batch["loc"], batch["vel"]
        return x + self.drift(torch.cat([x - x.mean(dim=1, keepdim=True), v], dim=-1))


def build(spec: dict, relaxed: bool = False, free_init_std: float = 1e-4) -> LinearDrift:
    """The ``x + w v`` baseline for an ``nbody`` task spec."""
    return LinearDrift(relaxed, free_init_std)
