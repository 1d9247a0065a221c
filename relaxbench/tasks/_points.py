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
    """Apply ``g``'s rotation to vectors ``x [..., 3]`` (and its permutation along ``point_axis``)."""
    out = x @ g.data["R"].to(x).t()
    if point_axis is not None:
        out = out.index_select(point_axis, g.data["perm"].to(x.device))
    return out
