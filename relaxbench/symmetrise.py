"""Symmetrisation by frame averaging: any model made exactly invariant / equivariant (the ``symmetrised`` method).

Frame averaging (Puny et al., ICLR 2022) and equi-tuning (Basu et al., AAAI 2023) wrap a model ``f`` as

    f_F(x) = 1 / |F(x)| sum_{g in F(x)} g . f(g^-1 . x)

over a *frame* ``F(x)``, a set of group elements with ``F(h x) = h F(x)``; then ``f_F(h x) = h f_F(x)`` for
every ``h`` of the group, whatever ``f`` is. relaxbench wraps the method's unconstrained model, at training and
at test. The frame comes from the task (``Task.frame``):

- ``"pca"`` (point sets, particles, molecules; SO(3) with, where the task has them, translations): centre the
  points of ``batch[task.frame_key]`` on their mean ``c``, take the eigenvectors ``V`` of their ``3 x 3``
  covariance (ascending eigenvalues) and enumerate the sign ambiguity: the four *proper* frames
  ``V diag(s)``, ``s in {+-1}^3`` with ``det = +1`` (after flipping ``V``'s last column if ``det V = -1``). The
  set does not depend on the signs the eigensolver picked, so it is exactly equivariant: ``F(R x + t) = R F(x)``
  (and translated by ``t``). Proper frames only: the tasks' groups are SO(3) (tetris and shapes contain
  chiral pairs that must stay apart), so the wrapper is SO(3)- but not O(3)-invariant. Honest limit:
  *the frame is exact only for inputs whose covariance has distinct eigenvalues*. For a degenerate spectrum
  (an exactly symmetric point set: a square, a regular tetrahedron) the eigenvectors of a repeated eigenvalue
  are any basis of its eigenspace, the frame is a continuum, and averaging over four of its elements is not
  invariant; near-degenerate spectra amplify rounding by ``1 / gap``. :func:`pca_frames` reports the smallest
  relative eigenvalue gap of each input so that callers can see it (jittered tetris shapes, N-body states and
  molecules are generic).
- ``"c4"`` (images): the four rotations by multiples of 90 degrees, which act exactly on the pixel grid (index
  permutations). The rotated-image tasks are SO(2)-invariant; C4 is the largest subgroup that acts exactly, so
  the wrapper is exactly C4-invariant and only approximately invariant to other angles. For a C8 model the
  45-degree rotations are *not* exact on the grid (they interpolate), so they are not used; D4 would add the
  reflections, which the rotated-digit tasks do not have (a mirrored 2 is not a 2).

The ``|F(x)|`` transformed copies go through ``f`` in one batched forward pass (4x the examples).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from relaxbench.symmetry import GroupElement
from relaxbench.tasks.base import Batch, Task

__all__ = ["FRAMES", "FrameAveraged", "c4_frames", "frame_elements", "pca_frames"]

FRAMES = ("pca", "c4")

# the four sign patterns with product +1: right-multiplying a proper frame keeps it proper
_PROPER_SIGNS = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)


def pca_frames(points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The proper PCA frames of point sets ``points [B, P, 3]``.

    Returns ``(frames [4, B, 3, 3], centre [B, 1, 3], gap [B])``: rotation matrices whose columns are the
    covariance eigenvectors (ascending eigenvalues) with the four sign patterns of determinant +1, the mean
    point, and the smallest gap between consecutive eigenvalues relative to the largest (0 for a degenerate
    spectrum, where the frame is not unique; module docstring). Differentiable (``eigh``'s gradient is finite
    for distinct eigenvalues).
    """
    centre = points.mean(1, keepdim=True)
    centred = points - centre
    cov = centred.transpose(1, 2) @ centred / points.shape[1]
    values, vectors = torch.linalg.eigh(cov)
    det = torch.linalg.det(vectors)
    vectors = torch.cat([vectors[..., :2], vectors[..., 2:] * det[:, None, None]], dim=-1)
    frames = vectors.unsqueeze(0) * _PROPER_SIGNS.to(vectors)[:, None, None, :]
    gap = (values[:, 1:] - values[:, :-1]).min(1).values / values[:, -1].abs().clamp_min(1e-300)
    return frames, centre, gap.detach()


def c4_frames() -> list[tuple[GroupElement, GroupElement]]:
    """``(g, g^-1)`` for the rotations by 0, 90, 180, 270 degrees (the image tasks' exact elements)."""
    return [
        (GroupElement(f"rot90x{k}", True, {"k": k}), GroupElement(f"rot90x{-k % 4}", True, {"k": -k % 4}))
        for k in range(4)
    ]


def frame_elements(task: Task, batch: Batch) -> list[tuple[GroupElement, GroupElement]]:
    """The frame of ``batch`` as pairs ``(g, g^-1)`` of the task's group elements (one element per example for
    ``"pca"``: rotation ``[B, 3, 3]``, translation ``[B, 1, 3]``, identity permutation)."""
    if task.frame == "c4":
        return c4_frames()
    if task.frame != "pca":
        raise ValueError(f"task {task.name!r} has no frame for symmetrisation (Task.frame is {task.frame!r})")
    points = batch[task.frame_key]
    frames, centre, _ = pca_frames(points)
    identity = torch.arange(points.shape[1], device=points.device)
    pairs = []
    for k, rot in enumerate(frames):
        inverse = rot.transpose(1, 2)
        g = GroupElement(f"frame{k}", True, {"R": rot, "t": centre, "perm": identity})
        g_inv = GroupElement(f"frame{k}^-1", True, {"R": inverse, "t": -(centre @ rot), "perm": identity})
        pairs.append((g, g_inv))
    return pairs


def _concat(batches: list[Batch]) -> dict[str, Tensor]:
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def _split(output, n: int) -> list:
    if isinstance(output, Tensor):
        return list(output.chunk(n))
    parts = {key: value.chunk(n) for key, value in output.items()}
    return [{key: parts[key][i] for key in parts} for i in range(n)]


def _mean(outputs: list):
    if isinstance(outputs[0], Tensor):
        return torch.stack(outputs).mean(0)
    return {key: torch.stack([o[key] for o in outputs]).mean(0) for key in outputs[0]}


class FrameAveraged(nn.Module):
    """``f_F(x) = mean_{g in F(x)} g . f(g^-1 . x)`` for a model ``f`` of ``task`` (module docstring).

    Takes and returns what ``model`` does (a batch dict ``{key: [B, ...]}`` -> the model's raw output, e.g.
    logits ``[B, classes]``, positions ``[B, N, 3]`` or energies ``[B]``); the group acts on inputs by
    ``task.act`` and on the model's output by ``task.act_model_output``.
    """

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        if task.frame not in FRAMES:
            raise ValueError(
                f"task {task.name!r} declares no frame for symmetrisation; choices of Task.frame: {list(FRAMES)}"
            )
        self.model = model
        self.task = task

    def forward(self, batch: Batch):
        pairs = frame_elements(self.task, batch)
        canonical = _concat([self.task.act(g_inv, batch) for _, g_inv in pairs])
        outputs = _split(self.model(canonical), len(pairs))
        return _mean([self.task.act_model_output(g, out) for (g, _), out in zip(pairs, outputs)])
