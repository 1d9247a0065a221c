"""VN-PointNet classifier (Deng et al. 2021), the model of the paper's headline experiment.

Takes ``batch["pos"] [B, N, 3]`` and returns logits ``[B, num_classes]``, invariant under rotations of the
input and permutations of its points. Layers (VN features ``[B, C, 3, N]``, see
:mod:`relaxbench.families.vector_neurons`):

1. edge features of the k-NN graph of the points: ``[x_j - x_i, x_i, x_j x x_i]`` (``[B, 3, 3, N, k]``),
   a VN-LinearLeakyReLU ``3 -> c1`` and a pool over the ``k`` neighbours;
2. VN-LinearLeakyReLU ``c1 -> c1``; with ``feature_transform`` a VN "STN" (three VN-LinearLeakyReLU layers
   ``c1 -> c1 -> c2 -> c_global``, a pool over points, two more ``c_global -> c_global/2 -> c_global/4``
   and a VN linear map back to ``c1`` vectors) whose global output is concatenated to every point;
3. VN-LinearLeakyReLU ``-> c2``, VN linear ``c2 -> c_global`` with VN batch norm;
4. the per-point features and their mean over points (``2 c_global`` channels) expressed in a learned
   equivariant frame (:class:`VNStdFeature`): invariant ``[B, 6 c_global, N]``, max over points;
5. an MLP head ``6 c_global -> head[0] -> head[1] -> num_classes`` (batch norm, ReLU, dropout).

``channels = (c1, c2, c_global)``; the paper's sizes are ``(21, 42, 341)`` (64//3, 128//3, 1024//3) with
``k = 20``, ``head = (512, 256)``, ``dropout = 0.4``; the defaults are small so that a run trains in minutes
on one CPU core. The cross product makes the model SO(3)- but not O(3)-invariant (it can tell mirror images
apart). ``relaxed=True`` adds a zero-initialised free dense map beside every VN linear map (feature and
direction maps, pooling and frame maps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from relaxbench.families import vector_neurons as vn
from relaxbench.families.blocks import invariant_head
from relaxbench.families.vector_neurons import (
    VNBatchNorm,
    VNLinear,
    VNLinearLeakyReLU,
    VNStdFeature,
    graph_feature,
    vn_pool,
)

__all__ = ["FAMILY", "TASK_KINDS", "VNPointNet", "build"]

FAMILY = "vector_neurons"
#: task kinds this model supports -> the group it respects on them
TASK_KINDS = {"point_classification": "SO(3) x permutations"}


class _VNTransform(nn.Module):
    """The VN feature transform ("STN"): ``[B, d, 3, N] -> [B, d, 3]`` global vectors."""

    def __init__(self, d: int, channels: Sequence[int], pooling: str, relaxed: bool, free_init_std: float):
        super().__init__()
        c1, c2, cg = channels
        block = lambda i, o: VNLinearLeakyReLU(
            i,
            o,
            relaxed,
            negative_slope=0.0,  # noqa: E731
            free_init_std=free_init_std,
        )
        self.convs = nn.Sequential(block(d, c1), block(c1, c2), block(c2, cg))
        self.pool = vn_pool(pooling, cg, relaxed, free_init_std)
        self.fcs = nn.Sequential(block(cg, cg // 2), block(cg // 2, cg // 4))
        self.out = vn.relax(VNLinear(cg // 4, d), relaxed, free_init_std)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.fcs(self.pool(self.convs(x))))


class VNPointNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        channels: Sequence[int],
        k: int,
        pooling: str,
        feature_transform: bool,
        head: Sequence[int],
        dropout: float,
        relaxed: bool,
        free_init_std: float,
    ) -> None:
        super().__init__()
        c1, c2, cg = channels
        self.k = k
        block = lambda i, o: VNLinearLeakyReLU(
            i,
            o,
            relaxed,
            negative_slope=0.0,  # noqa: E731
            free_init_std=free_init_std,
        )
        self.conv_pos = block(3, c1)
        self.pool = vn_pool(pooling, c1, relaxed, free_init_std)
        self.conv1 = block(c1, c1)
        self.transform = (
            _VNTransform(c1, channels, pooling, relaxed, free_init_std) if feature_transform else None
        )
        self.conv2 = block(2 * c1 if feature_transform else c1, c2)
        self.conv3 = vn.relax(VNLinear(c2, cg), relaxed, free_init_std)
        self.bn3 = VNBatchNorm(cg)
        self.std_feature = VNStdFeature(2 * cg, relaxed, negative_slope=0.0, free_init_std=free_init_std)
        self.head = invariant_head(6 * cg, head, num_classes, dropout, nn.ReLU())

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        pos = batch["pos"]  # [B, N, 3]
        x = pos.transpose(1, 2).unsqueeze(1)  # [B, 1, 3, N]
        x = self.pool(self.conv_pos(graph_feature(x, self.k, cross=True)))  # [B, c1, 3, N]
        x = self.conv1(x)
        if self.transform is not None:
            x = torch.cat([x, self.transform(x).unsqueeze(-1).expand_as(x)], dim=1)
        x = self.bn3(self.conv3(self.conv2(x)))  # [B, cg, 3, N]
        x = torch.cat([x, x.mean(-1, keepdim=True).expand_as(x)], dim=1)
        invariant = self.std_feature(x).flatten(1, 2)  # [B, 6 cg, N]
        return self.head(invariant.max(-1).values)


def build(
    spec: dict,
    relaxed: bool = False,
    channels: Sequence[int] = (8, 16, 64),
    k: int = 20,
    pooling: str = "mean",
    feature_transform: bool = True,
    head: Sequence[int] = (64, 32),
    dropout: float = 0.4,
    free_init_std: float = 0.0,
) -> VNPointNet:
    """A VN-PointNet classifier for a point-classification spec (``num_classes``).

    Paper scale: ``channels=(21, 42, 341), head=(512, 256)``.
    """
    if len(channels) != 3:
        raise ValueError(f"channels must be (c1, c2, c_global), got {channels!r}")
    return VNPointNet(
        spec["num_classes"],
        tuple(channels),
        k,
        pooling,
        feature_transform,
        tuple(head),
        dropout,
        relaxed,
        free_init_std,
    )
