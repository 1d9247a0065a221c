"""A small Tensor-Field-Network-style point classifier from e3nn pieces (for ``tetris``).

Takes ``batch["pos"] [B, P, 3]`` (a fully connected point set per example) and returns invariant logits
``[B, num_classes]``. Each layer: messages ``TP(h_j, Y(r_ij); R(|r_ij|))`` (spherical harmonics up to
``l_max``, radial MLP weights) summed over neighbours, then a relaxable self-interaction ``o3.Linear`` and a
gated nonlinearity. Representations: node features ``hidden`` irreps (default
``"8x0e + 8x0o + 4x1e + 4x1o"``); the last layer outputs ``num_classes x 0e + num_classes x 0o`` per point,
averaged over points, and a linear readout of those scalars gives the logits.

The odd scalars ``0o`` (pseudo-scalars, e.g. triple products) are invariant under rotations but change sign
under reflections, so the model is SO(3)- but not O(3)-invariant: it can tell a chiral pair apart (tetris'
two mirror-image shapes). With even scalars alone it was O(3)-invariant and gave mirror images the same logits.
Odd features first appear in the third layer (``1o x 1o -> 1e``, then ``1e x 1o -> 0o``), so telling mirror
images apart needs ``layers >= 3`` (the default).
"""

from __future__ import annotations

import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet
from torch import Tensor, nn

from relaxbench.families import irreps

__all__ = ["FAMILY", "TASK_KINDS", "TFN", "build"]

FAMILY = "tensor_field"
#: task kinds this model supports -> the group it respects on them
TASK_KINDS = {"point_classification": "SO(3) x permutations"}


class _GatedBlock(nn.Module):
    """Point convolution ``irreps_in -> irreps_out`` (gated unless ``last``)."""

    def __init__(self, irreps_in, irreps_sh, irreps_out, n_radial, relaxed, last=False) -> None:
        super().__init__()
        irreps_out = o3.Irreps(irreps_out)
        if last:
            self.gate = None
            pre = irreps_out
        else:
            self.gate = irreps.gate(irreps_out, even=torch.relu)
            pre = self.gate.irreps_in
        self.tp = o3.FullyConnectedTensorProduct(irreps_in, irreps_sh, pre, shared_weights=False)
        self.radial = FullyConnectedNet([n_radial, 32, self.tp.weight_numel], torch.relu)
        self.self_interaction = irreps.relax(o3.Linear(pre, pre), relaxed)
        self.irreps_out = irreps_out if last else self.gate.irreps_out

    def forward(self, h: Tensor, sh: Tensor, radial: Tensor, n_points: int) -> Tensor:
        # h [B, P, d_in]; sh [B, P, P, d_sh]; radial [B, P, P, n_radial]
        b, p = h.shape[:2]
        h_j = h.unsqueeze(1).expand(b, p, p, h.shape[-1])
        messages = self.tp(h_j, sh, self.radial(radial))  # [B, P(i), P(j), d_pre]
        mask = 1.0 - torch.eye(p, dtype=h.dtype, device=h.device)
        out = (messages * mask[None, :, :, None]).sum(2) / (n_points - 1) ** 0.5
        out = self.self_interaction(out)
        return out if self.gate is None else self.gate(out)


class TFN(nn.Module):
    def __init__(
        self,
        num_classes: int,
        hidden: str,
        l_max: int,
        layers: int,
        max_radius: float,
        n_radial: int,
        relaxed: bool,
    ) -> None:
        super().__init__()
        self.irreps_sh = o3.Irreps.spherical_harmonics(l_max)
        self.max_radius, self.n_radial = max_radius, n_radial
        blocks, irreps = [], o3.Irreps("0e")
        for _ in range(layers - 1):
            blocks.append(_GatedBlock(irreps, self.irreps_sh, hidden, n_radial, relaxed))
            irreps = blocks[-1].irreps_out
        scalars = f"{num_classes}x0e + {num_classes}x0o"  # odd scalars: SO(3)- but not O(3)-invariant
        blocks.append(_GatedBlock(irreps, self.irreps_sh, scalars, n_radial, relaxed, last=True))
        self.blocks = nn.ModuleList(blocks)
        self.readout = nn.Linear(2 * num_classes, num_classes)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        pos = batch["pos"]  # [B, P, 3]
        b, p, _ = pos.shape
        rel = pos.unsqueeze(1) - pos.unsqueeze(2)  # r_ij = x_j - x_i, [B, P, P, 3]
        sh, _, radial = irreps.edge_features(rel, self.irreps_sh, self.max_radius, self.n_radial)
        h = pos.new_ones(b, p, 1)
        for block in self.blocks:
            h = block(h, sh, radial, p)
        return self.readout(h.mean(1))  # [B, 2 num_classes] invariant scalars -> logits


def build(
    spec: dict,
    relaxed: bool = False,
    hidden: str = "8x0e + 8x0o + 4x1e + 4x1o",
    l_max: int = 2,
    layers: int = 3,
    max_radius: float = 4.0,
    n_radial: int = 8,
) -> TFN:
    """A TFN classifier for a point-classification task spec (``num_classes``)."""
    return TFN(spec["num_classes"], hidden, l_max, layers, max_radius, n_radial, relaxed)
