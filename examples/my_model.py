"""A user's own architecture, registered from a config without editing relaxbench (docs/ADD_A_MODEL.md).

A small e3nn point classifier for ``tetris``: it takes ``batch["pos"] [B, P, 3]`` (a point set per example,
dimensionless coordinates) and returns logits ``[B, num_classes]`` invariant under rotations (SO(3)) and
permutations of the points.

1. Embedding: each point sees the others through spherical harmonics ``Y(r_ij)`` (``l <= l_max``) times a
   radial basis of ``|r_ij|`` (``n_radial`` functions), averaged over ``j``: irreps
   ``n_radial x (0e + 1o + 2e + ...)``.
2. ``layers`` blocks, each a relaxable ``o3.Linear`` (irreps_in -> hidden) -> tensor square of the result (pairs of
   features multiply, so pseudo-tensors such as cross and triple products appear and the model can tell
   the chiral pair apart; ``hidden`` needs odd-parity irreps for that) -> gated nonlinearity (irreps
   ``hidden``).
3. Readout: the scalars (``0e`` and ``0o``, both invariant under rotations) averaged over the points, then a
   plain ``Linear`` to the classes.

The relaxation goes through the e3nn family's verb, ``relaxbench.families.irreps.relax(o3.Linear(...),
relaxed)``: the ``e3nn.o3.Linear`` itself when ``relaxed`` is false; otherwise that linear map plus a free dense
branch ``theta * W x`` whose Lie-derivative and norm penalties the trainer adds.
``tests/workflow/test_example_model.py`` checks the model with the contract of ``relaxbench.testing``. That is all a model needs to take
part in every method (``equivariant``, ``relaxed`` and its ablations, ``rpp``, ``unconstrained``).
"""

from __future__ import annotations

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from torch import Tensor, nn

from relaxbench.families import irreps

__all__ = ["PointClassifier", "build"]


class _Block(nn.Module):
    """relaxable ``o3.Linear`` -> tensor square -> gate.

    Per-point features ``[B, P, irreps_in.dim] -> [B, P, irreps_out.dim]`` (``irreps_out`` = ``hidden``).
    """

    def __init__(self, irreps_in: o3.Irreps, hidden: o3.Irreps, relaxed: bool) -> None:
        super().__init__()
        self.gate = irreps.gate(hidden, even=torch.relu)  # relu on 0e, tanh on 0o, sigmoid gates on l > 0
        self.linear = irreps.relax(o3.Linear(irreps_in, hidden), relaxed)  # the relaxable map
        self.square = o3.FullyConnectedTensorProduct(hidden, hidden, self.gate.irreps_in)
        self.irreps_out = self.gate.irreps_out

    def forward(self, h: Tensor) -> Tensor:
        h = self.linear(h)
        return self.gate(self.square(h, h))


class PointClassifier(nn.Module):
    """SO(3)- and permutation-invariant classifier of point sets.

    Args:
        num_classes: number of output logits.
        hidden: irreps of the hidden per-point features (must contain scalars ``0e`` or ``0o``).
        l_max: highest degree of the spherical harmonics in the embedding.
        n_radial: number of radial basis functions on ``[0, max_radius]``.
        layers: number of blocks.
        max_radius: cutoff of the radial basis (same length unit as the positions).
        relaxed: build relaxable linear maps (see the module docstring).
    """

    def __init__(
        self,
        num_classes: int,
        hidden: str,
        l_max: int,
        n_radial: int,
        layers: int,
        max_radius: float,
        relaxed: bool,
    ) -> None:
        super().__init__()
        self.irreps_sh = o3.Irreps.spherical_harmonics(l_max)
        self.n_radial, self.max_radius = n_radial, max_radius
        irreps = o3.Irreps([(n_radial, ir) for _, ir in self.irreps_sh])
        self.irreps_in = irreps
        blocks = []
        for _ in range(layers):
            blocks.append(_Block(irreps, o3.Irreps(hidden), relaxed))
            irreps = blocks[-1].irreps_out
        self.blocks = nn.ModuleList(blocks)
        scalar_index = [
            torch.arange(sl.start, sl.stop) for (_, ir), sl in zip(irreps, irreps.slices()) if ir.l == 0
        ]
        self.register_buffer("scalar_index", torch.cat(scalar_index), persistent=False)
        self.readout = nn.Linear(len(self.scalar_index), num_classes)

    def embed(self, pos: Tensor) -> Tensor:
        """``pos [B, P, 3] -> [B, P, irreps_in.dim]``: radial basis x spherical harmonics, mean over neighbours."""
        b, p, _ = pos.shape
        rel = pos.unsqueeze(1) - pos.unsqueeze(2)  # r_ij = x_j - x_i, [B, P, P, 3]
        sh = o3.spherical_harmonics(self.irreps_sh, rel, normalize=True, normalization="component")
        radial = soft_one_hot_linspace(
            rel.norm(dim=-1), 0.0, self.max_radius, self.n_radial, basis="smooth_finite", cutoff=True
        )  # [B, P, P, n_radial]
        radial = radial * (1.0 - torch.eye(p, dtype=pos.dtype, device=pos.device))[..., None]
        parts = []
        for (_, ir), sl in zip(self.irreps_sh, self.irreps_sh.slices()):
            # [B, P, n_radial, 2l+1]: e3nn lays out "n x l" as n blocks of 2l+1 components
            part = torch.einsum("bijr,bijm->birm", radial, sh[..., sl]) / (p - 1)
            parts.append(part.reshape(b, p, self.n_radial * ir.dim))
        return torch.cat(parts, dim=-1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        h = self.embed(batch["pos"])
        for block in self.blocks:
            h = block(h)
        scalars = h[..., self.scalar_index].mean(dim=1)  # [B, n_scalars], invariant
        return self.readout(scalars)


def build(
    spec: dict,
    relaxed: bool = False,
    hidden: str = "8x0e + 8x0o + 4x1e + 4x1o + 2x2e + 2x2o",
    l_max: int = 2,
    n_radial: int = 4,
    layers: int = 2,
    max_radius: float = 4.0,
) -> PointClassifier:
    """The registry's signature: ``build(task spec, relaxed=False, **params from the config)``."""
    return PointClassifier(spec["num_classes"], hidden, l_max, n_radial, layers, max_radius, relaxed)
