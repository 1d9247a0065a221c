"""VN-DGCNN classifier (Deng et al. 2021): dynamic-graph edge convolutions on Vector Neuron features.

Takes ``batch["pos"] [B, N, 3]`` and returns logits ``[B, num_classes]``, invariant under rotations of the
input and permutations of its points. Layers (VN features ``[B, C, 3, N]``, see
:mod:`relaxbench.families.vector_neurons`):

1. four edge convolutions: edge features ``[x_j - x_i, x_i]`` of the k-NN graph (``[B, 2C, 3, N, k]``;
   neighbours by coordinates for the first, by distance between the current VN features after that),
   a VN-LinearLeakyReLU and a pool over the ``k`` neighbours; widths ``e1, e2, e3, e4``;
2. the four outputs concatenated, a VN-LinearLeakyReLU to ``c_global`` with one shared direction;
3. per-point features and their mean (``2 c_global`` channels) in a learned equivariant frame
   (:class:`VNStdFeature`): invariant ``[B, 6 c_global, N]``, max and mean over points;
4. an MLP head ``12 c_global -> head[0] -> head[1] -> num_classes`` (batch norm, LeakyReLU 0.2, dropout).

``channels = (e1, e2, e3, e4, c_global)``; the paper's sizes are ``(21, 21, 42, 85, 341)`` with ``k = 20``,
``head = (512, 256)``, ``dropout = 0.5``; the defaults are small for CPU runs. Every feature is built from
vectors by linear maps, differences and inner products, so the model is invariant under all of O(3):
a shape and its mirror image get the same logits (the synthetic helix pair is indistinguishable to it).
``relaxed=True`` adds a zero-initialised free dense map beside every VN linear map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from relaxbench.families.blocks import invariant_head
from relaxbench.families.vector_neurons import VNLinearLeakyReLU, VNStdFeature, graph_feature, vn_pool

__all__ = ["FAMILY", "TASK_KINDS", "VNDGCNN", "build"]

FAMILY = "vector_neurons"
#: task kinds this model supports -> the group it respects on them
TASK_KINDS = {"point_classification": "O(3) x permutations"}


class VNDGCNN(nn.Module):
    def __init__(
        self,
        num_classes: int,
        channels: Sequence[int],
        k: int,
        pooling: str,
        head: Sequence[int],
        dropout: float,
        relaxed: bool,
        free_init_std: float,
    ) -> None:
        super().__init__()
        *edge, cg = channels
        self.k = k
        widths_in = [1] + list(edge[:-1])
        self.edge_convs = nn.ModuleList(
            VNLinearLeakyReLU(2 * c_in, c_out, relaxed, free_init_std=free_init_std)
            for c_in, c_out in zip(widths_in, edge)
        )
        self.pools = nn.ModuleList(vn_pool(pooling, c, relaxed, free_init_std) for c in edge)
        self.conv5 = VNLinearLeakyReLU(
            sum(edge), cg, relaxed, share_nonlinearity=True, free_init_std=free_init_std
        )
        self.std_feature = VNStdFeature(2 * cg, relaxed, free_init_std=free_init_std)
        self.head = invariant_head(12 * cg, head, num_classes, dropout, nn.LeakyReLU(0.2), dropout_each=True)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        x = batch["pos"].transpose(1, 2).unsqueeze(1)  # [B, 1, 3, N]
        levels = []
        for conv, pool in zip(self.edge_convs, self.pools):
            x = pool(conv(graph_feature(x, self.k)))
            levels.append(x)
        x = self.conv5(torch.cat(levels, dim=1))  # [B, cg, 3, N]
        x = torch.cat([x, x.mean(-1, keepdim=True).expand_as(x)], dim=1)
        invariant = self.std_feature(x).flatten(1, 2)  # [B, 6 cg, N]
        return self.head(torch.cat([invariant.max(-1).values, invariant.mean(-1)], dim=1))


def build(
    spec: dict,
    relaxed: bool = False,
    channels: Sequence[int] = (8, 8, 16, 32, 64),
    k: int = 20,
    pooling: str = "mean",
    head: Sequence[int] = (64, 32),
    dropout: float = 0.5,
    free_init_std: float = 0.0,
) -> VNDGCNN:
    """A VN-DGCNN classifier for a point-classification spec (``num_classes``).

    Paper scale: ``channels=(21, 21, 42, 85, 341), head=(512, 256)``.
    """
    if len(channels) != 5:
        raise ValueError(f"channels must be (e1, e2, e3, e4, c_global), got {channels!r}")
    return VNDGCNN(
        spec["num_classes"], tuple(channels), k, pooling, tuple(head), dropout, relaxed, free_init_std
    )
