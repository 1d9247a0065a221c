"""``lift``: an equivariant backbone with a non-equivariant encoder of the input (the Lift baseline of Wang et al.).

Rotation spec: the C4 steerable network of ``equiv`` split after its second convolution. An MLP encoder of the
whole input window (``Linear(2 T_in H W -> encoder_hidden) -> BatchNorm1d -> ReLU -> Linear(encoder_hidden ->
encoder_hidden) -> BatchNorm1d -> ReLU -> Linear(encoder_hidden -> 4 lift_fields)``) gives ``lift_fields``
spatially constant extra "regular" fields, concatenated to the backbone's fields before the remaining
``layers - 2`` convolutions. The encoder is not equivariant, so neither is the model: it can learn the
symmetry breaking of the data (Wang et al.'s Lift_Rot_Expansion, with its JetFlow-sized encoder input made the
task's size).

Relaxed (``relaxed=True``): every ``R2Conv`` of the backbone gets the paper's free ``Conv2d``
(:class:`~relaxbench.families.fields.RelaxedR2Conv`).

Parameters (CPU-scale defaults): ``hidden`` regular fields (8), ``layers`` (5, at least 3), ``kernel_size`` (3),
``encoder_hidden`` (16), ``lift_fields`` (``null``: ``max(1, hidden // 4)``, as published), ``batch_norm``
(True), ``free_init_std`` (1e-4), ``penalty_examples`` (4).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from escnn import nn as enn
from torch import Tensor, nn

from relaxbench.models import _plume
from relaxbench.models._plume import RelaxOptions

__all__ = ["FAMILY", "LiftNet", "build", "build_unconstrained"]

FAMILY = "steerable_cnn"

LIFT_AFTER = 2  # convolutions before the encoder's fields join (as published)


class LiftNet(nn.Module):
    """``frames [B, T, 2, H, W]`` -> ``[B, 2, H, W]``: ``head`` (steerable) on the frames, the ``encoder``'s
    constant fields concatenated, ``tail`` (steerable) to the velocity field.

    Attributes:
        layers, kernel_size: the number of steerable convolutions and their kernel size.
    """

    def __init__(
        self,
        in_type: enn.FieldType,
        head: enn.SequentialModule,
        encoder: nn.Sequential,
        tail: enn.SequentialModule,
        layers: int,
        kernel_size: int,
    ) -> None:
        super().__init__()
        self.in_type, self.head, self.encoder, self.tail = in_type, head, encoder, tail
        self.layers, self.kernel_size = layers, kernel_size

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = _plume.stack_frames(batch)
        h = self.head(enn.GeometricTensor(x, self.in_type)).tensor
        lifted = self.encoder(x.flatten(1))[:, :, None, None].expand(-1, -1, *h.shape[2:])
        return self.tail(enn.GeometricTensor(torch.cat([h, lifted], 1), self.tail.in_type)).tensor


def build(
    spec: dict,
    relaxed: bool = False,
    hidden: int = 8,
    layers: int = 5,
    kernel_size: int = 3,
    encoder_hidden: int = 16,
    lift_fields: int | None = None,
    batch_norm: bool = True,
    free_init_std: float = 1e-4,
    penalty_examples: int | None = 4,
) -> LiftNet:
    """The Lift model for a plume spec (module docstring)."""
    if _plume.check_spec(spec, "lift") != "rotation":
        raise ValueError("model 'lift': the scale form is not built yet; choices for symmetry: ['rotation']")
    if layers <= LIFT_AFTER:
        raise ValueError(f"model 'lift' needs layers > {LIFT_AFTER}, got {layers}")
    lift_fields = max(1, hidden // 4) if lift_fields is None else lift_fields
    frames, fields, velocity = _plume.c4_types(spec["in_frames"], hidden)
    gs = fields.gspace
    joined = enn.FieldType(gs, (hidden + lift_fields) * [gs.regular_repr])
    relax = RelaxOptions(relaxed, free_init_std, penalty_examples)
    head_types = [frames] + [fields] * LIFT_AFTER
    tail_types = [joined] + [fields] * (layers - LIFT_AFTER - 1) + [velocity]
    head = _plume.steerable_stack(
        head_types, _plume.r2conv, kernel_size, relax, batch_norm, activate_last=True
    )
    encoder = nn.Sequential(
        nn.Linear(frames.size * spec["size"] ** 2, encoder_hidden),
        nn.BatchNorm1d(encoder_hidden),
        nn.ReLU(),
        nn.Linear(encoder_hidden, encoder_hidden),
        nn.BatchNorm1d(encoder_hidden),
        nn.ReLU(),
        nn.Linear(encoder_hidden, lift_fields * gs.regular_repr.size),
    )
    tail = _plume.steerable_stack(
        tail_types, _plume.r2conv, kernel_size, relax, batch_norm, activate_last=False
    )
    return LiftNet(frames, head, encoder, tail, layers, kernel_size)


def build_unconstrained(spec: dict, **params) -> _plume.PlumeCNN:
    """A plain CNN of the same depth and kernel whose parameter count is closest to this model's."""
    return _plume.matched_cnn(spec, build(spec, **params))
