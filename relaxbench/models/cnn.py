"""A plain (non-equivariant) CNN image classifier: the reference for the steerable-CNN family.

Takes ``batch["image"] [B, C, S, S]`` and returns logits ``[B, num_classes]``; no symmetry constraint.
Blocks mirror :mod:`relaxbench.models.steerable_cnn` after export: ``Conv2d(k x k, "same" zero padding,
no bias) -> BatchNorm2d -> ReLU [-> 3x3 average pool, stride 2]``, then global average pooling and an MLP
head ``Linear -> ReLU -> Linear``. :func:`build_matched` picks the widths that match a parameter budget (the
steerable model's ``build_unconstrained``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["CNN", "FAMILY", "build", "build_matched", "build_unconstrained", "count_parameters"]

FAMILY = "steerable_cnn"


class CNN(nn.Module):
    """``batch["image"] [B, in_channels, S, S]`` -> logits ``[B, num_classes]``."""

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


def count_parameters(
    in_channels: int, num_classes: int, channels: Sequence[int], kernel_size: int, head_hidden: int
) -> int:
    """Number of trainable parameters of :class:`CNN` with these sizes (without building it)."""
    widths = [in_channels, *channels]
    convs = sum(a * b * kernel_size**2 + 2 * b for a, b in zip(widths, widths[1:]))
    return convs + channels[-1] * head_hidden + head_hidden + head_hidden * num_classes + num_classes


def _default_pools(n_blocks: int, pool_after: Sequence[int] | None) -> list[int]:
    return list(range(n_blocks - 1)) if pool_after is None else list(pool_after)


def build(
    spec: dict,
    relaxed: bool = False,
    channels: Sequence[int] = (32, 64, 64),
    kernel_size: int = 5,
    pool_after: Sequence[int] | None = None,
    head_hidden: int = 64,
) -> CNN:
    """A plain CNN for an image-classification spec (``channels``, ``num_classes``); ``relaxed`` is refused
    (it has no equivariant layers to relax)."""
    if relaxed:
        raise ValueError(
            "the plain CNN has no equivariant layers to relax; use the 'equivariant' or "
            "'unconstrained' method"
        )
    return CNN(
        spec["channels"],
        spec["num_classes"],
        tuple(channels),
        kernel_size,
        _default_pools(len(channels), pool_after),
        head_hidden,
    )


build_unconstrained = build


def build_matched(
    spec: dict,
    target: int,
    n_blocks: int,
    kernel_size: int,
    pool_after: Sequence[int] | None,
    head_hidden: int,
) -> CNN:
    """A :class:`CNN` of ``n_blocks`` equal-width blocks whose parameter count is closest to ``target``."""

    def count(width: int) -> int:
        return count_parameters(
            spec["channels"], spec["num_classes"], [width] * n_blocks, kernel_size, head_hidden
        )

    width = 1
    while count(width + 1) <= target:
        width += 1
    if abs(count(width + 1) - target) < abs(count(width) - target):
        width += 1
    return build(
        spec,
        channels=[width] * n_blocks,
        kernel_size=kernel_size,
        pool_after=pool_after,
        head_hidden=head_hidden,
    )
