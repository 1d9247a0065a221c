"""Group actions shared by tasks on 3D point sets: rotations (SO(3)) and permutations of the points."""

from __future__ import annotations

import torch
from torch import Tensor

from relaxbench.symmetry import GroupElement, random_rotation_matrices

__all__ = ["rotate", "sample_rotations_and_permutations"]


def sample_rotations_and_permutations(
    n: int, generator: torch.Generator, n_points: int
) -> list[GroupElement]:
    """``n`` Haar-random rotations, each with a random permutation of ``n_points`` points (all exact)."""
    rotations = random_rotation_matrices(n, generator)
    return [
        GroupElement(
            f"R{i}", True, {"R": rotations[i], "perm": torch.randperm(n_points, generator=generator)}
        )
        for i in range(n)
    ]


def rotate(g: GroupElement, x: Tensor, point_axis: int | None = 1) -> Tensor:
    """Apply ``g``'s rotation to vectors ``x [B, ..., 3]`` (and its permutation along ``point_axis``).

    ``g.data["R"]`` is one rotation ``[3, 3]``, or one per example ``[B, 3, 3]`` (a frame, :mod:`relaxbench.symmetrise`).
    """
    rot = g.data["R"].to(x)
    if rot.dim() == 3:
        rot = rot.reshape(rot.shape[0], *([1] * (x.dim() - 3)), 3, 3)
    out = x @ rot.transpose(-1, -2)
    if point_axis is not None:
        out = out.index_select(point_axis, g.data["perm"].to(x.device))
    return out
