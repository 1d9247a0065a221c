"""Blocks shared by models of several families that carry no symmetry of their own.

- :func:`fully_connected_edges`: the directed edges of a complete graph (N-body GNNs).
- :func:`invariant_head`: an MLP classifier on invariant features (Vector Neuron classifiers).
- :class:`CNN` and :func:`matched_cnn`: a plain image classifier, the unconstrained reference of the
  steerable CNNs (``relaxbench.models.cnn``, and a steerable model's ``build_unconstrained``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["CNN", "count_cnn_parameters", "fully_connected_edges", "invariant_head", "matched_cnn"]


def fully_connected_edges(n: int) -> tuple[Tensor, Tensor]:
    """``(receivers, senders)`` of the ``n (n - 1)`` directed edges ``j -> i``, ``j != i``, grouped by receiver.

    Edge ``k`` has receiver ``k // (n - 1)``, so a ``[..., n (n - 1), F]`` edge tensor reshapes to
    ``[..., n, n - 1, F]`` for aggregation over senders.
    """
    receivers = torch.arange(n).repeat_interleave(n - 1)
    senders = torch.tensor([j for i in range(n) for j in range(n) if j != i], dtype=torch.long)
    return receivers, senders


def invariant_head(
    d_in: int,
    head: Sequence[int],
    num_classes: int,
    dropout: float,
    activation: nn.Module,
    dropout_each: bool = False,
) -> nn.Sequential:
    """MLP on invariant features ``[B, d_in] -> [B, num_classes]``: ``Linear, BatchNorm, activation`` per
    hidden width. Dropout as in the published classifiers: VN-PointNet drops out once, before the last
    hidden batch norm; VN-DGCNN (``dropout_each``) after every hidden block."""
    layers: list[nn.Module] = []
    for i, width in enumerate(head):
        layers.append(nn.Linear(d_in if i == 0 else head[i - 1], width))
        if not dropout_each and i == len(head) - 1 and i > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.BatchNorm1d(width), activation]
        if dropout_each:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(head[-1] if head else d_in, num_classes))
    return nn.Sequential(*layers)


class CNN(nn.Module):
    """A plain CNN classifier, ``batch["image"] [B, in_channels, S, S]`` -> logits ``[B, num_classes]``.

    Blocks mirror an exported steerable CNN: ``Conv2d(k x k, "same" zero padding, no bias) -> BatchNorm2d ->
    ReLU [-> 3x3 average pool, stride 2]`` (after the blocks listed in ``pool_after``), then global average
    pooling and an MLP head ``Linear -> ReLU -> Linear``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int],
        kernel_size: int,
        pool_after: Sequence[int],
        head_hidden: int,
    ) -> None:
        super().__init__()
        layers, width = [], in_channels
        for i, out in enumerate(channels):
            layers += [
                nn.Conv2d(width, out, kernel_size, padding=kernel_size // 2, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            if i in pool_after:
                layers.append(nn.AvgPool2d(3, stride=2, padding=1))
            width = out
        layers += [
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width, head_hidden),
            nn.ReLU(),
            nn.Linear(head_hidden, num_classes),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.net(batch["image"])


def count_cnn_parameters(
    in_channels: int, num_classes: int, channels: Sequence[int], kernel_size: int, head_hidden: int
) -> int:
    """Number of trainable parameters of :class:`CNN` with these sizes (without building it)."""
    widths = [in_channels, *channels]
    convs = sum(a * b * kernel_size**2 + 2 * b for a, b in zip(widths, widths[1:]))
    return convs + channels[-1] * head_hidden + head_hidden + head_hidden * num_classes + num_classes


def matched_cnn(
    spec: dict,
    target: int,
    n_blocks: int,
    kernel_size: int,
    pool_after: Sequence[int],
    head_hidden: int,
) -> CNN:
    """A :class:`CNN` for an image spec (``channels``, ``num_classes``) of ``n_blocks`` equal-width blocks whose
    parameter count is closest to ``target``."""

    def count(width: int) -> int:
        return count_cnn_parameters(
            spec["channels"], spec["num_classes"], [width] * n_blocks, kernel_size, head_hidden
        )

    width = 1
    while count(width + 1) <= target:
        width += 1
    if abs(count(width + 1) - target) < abs(count(width) - target):
        width += 1
    return CNN(
        spec["channels"], spec["num_classes"], (width,) * n_blocks, kernel_size, list(pool_after), head_hidden
    )
