"""A plain (non-equivariant) CNN image classifier: the reference for the steerable-CNN family.

Takes ``batch["image"] [B, C, S, S]`` and returns logits ``[B, num_classes]``; no symmetry constraint.
Blocks mirror :mod:`relaxbench.models.steerable_cnn` after export (:class:`relaxbench.families.blocks.CNN`);
the steerable model's ``build_unconstrained`` picks the widths that match its parameter budget.
"""

from __future__ import annotations

from collections.abc import Sequence

from relaxbench.families.blocks import CNN

__all__ = ["FAMILY", "RELAXABLE", "TASK_KINDS", "build", "build_unconstrained"]

FAMILY = "steerable_cnn"
#: task kinds this model supports -> the group it respects on them
TASK_KINDS = {"image_classification": "none"}
#: no equivariant layer to relax: the config check refuses the ``relaxed`` methods on this model
RELAXABLE = False


def build(
    spec: dict,
    relaxed: bool = False,
    channels: Sequence[int] = (32, 64, 64),
    kernel_size: int = 5,
    pool_after: Sequence[int] | None = None,
    head_hidden: int = 64,
) -> CNN:
    """A plain CNN for an image-classification spec (``channels``, ``num_classes``); ``relaxed`` is refused
    (it has no equivariant layers to relax). ``pool_after`` defaults to every block but the last."""
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
        list(range(len(channels) - 1)) if pool_after is None else list(pool_after),
        head_hidden,
    )


build_unconstrained = build
