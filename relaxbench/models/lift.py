"""``lift``: an equivariant backbone with a non-equivariant encoder of the input (the Lift baseline of Wang et al.).

An MLP encoder of the whole input window (:func:`~relaxbench.families.plume.input_encoder`: ``Linear(2 T_in H W
-> encoder_hidden) -> BatchNorm1d -> ReLU -> Linear -> BatchNorm1d -> ReLU -> Linear``) gives spatially constant
extra features that join the backbone's after its second convolution, before the remaining ``layers - 2``. The
encoder is not equivariant, so neither is the model: it can learn the symmetry breaking of the data (Wang et
al.'s Lift_Rot_Expansion / Lift_Scale_Expansion, with the encoder's input sized by the task).

- Rotation spec: the C4 network of ``equiv``; the encoder adds ``lift_fields`` "regular" fields (default
  ``max(1, hidden // 4)``, as published).
- Scale spec: the scale network of ``equiv``; the encoder adds ``lift_fields`` channels, the same at every scale
  (default ``max(1, hidden // 2)``, as published).

Relaxed (``relaxed=True``): the paper's free ``Conv2d`` beside every C4 convolution, or beside the first scale
convolution.

Parameters (CPU-scale defaults): ``hidden`` (8), ``layers`` (5, at least 3), ``kernel_size`` (``null``: 3
rotation, 5 scale), ``encoder_hidden`` (16), ``lift_fields`` (``null``: see above), ``batch_norm`` (True,
rotation only), ``scales`` and ``effective_size`` (scale only, as ``equiv``), ``free_init_std`` (1e-4),
``penalty_examples`` (4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from escnn import nn as enn
from torch import Tensor, nn

from relaxbench.families import plume as _plume
from relaxbench.families.plume import RelaxOptions

__all__ = ["FAMILY", "TASK_KINDS", "LiftNet", "build", "build_unconstrained"]

FAMILY = "steerable_cnn"
#: task kinds this model supports -> the group it respects on them
TASK_KINDS = {"plume": "none: its encoder breaks C4 (rotation spec) and scale (scale spec)"}

LIFT_AFTER = 2  # convolutions before the encoder's features join (as published)


class LiftNet(nn.Module):
    """C4 Lift model: ``frames [B, T, 2, H, W]`` -> ``[B, 2, H, W]``: ``head`` (steerable) on the frames, the
    ``encoder``'s constant fields concatenated, ``tail`` (steerable) to the velocity field.

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
    kernel_size: int | None = None,
    encoder_hidden: int = 16,
    lift_fields: int | None = None,
    batch_norm: bool = True,
    scales: Sequence[float] = _plume.SCALES,
    effective_size: int = 7,
    free_init_std: float = 1e-4,
    penalty_examples: int | None = 4,
) -> nn.Module:
    """The Lift model for a plume spec (module docstring)."""
    symmetry = _plume.check_spec(spec, "lift")
    if layers <= LIFT_AFTER:
        raise ValueError(f"model 'lift' needs layers > {LIFT_AFTER}, got {layers}")
    k = _plume.kernel_size_for(symmetry, kernel_size)
    relax = RelaxOptions(relaxed, free_init_std, penalty_examples)
    if symmetry == "scale":
        width = max(1, hidden // 2) if lift_fields is None else lift_fields
        return _plume.scale_net(
            spec,
            relax,
            hidden,
            layers,
            k,
            scales,
            effective_size,
            encoder_hidden=encoder_hidden,
            lift_channels=width,
        )
    lift_fields = max(1, hidden // 4) if lift_fields is None else lift_fields
    frames, fields, velocity = _plume.c4_types(spec["in_frames"], hidden)
    gs = fields.gspace
    joined = enn.FieldType(gs, (hidden + lift_fields) * [gs.regular_repr])
    head_types = [frames] + [fields] * LIFT_AFTER
    tail_types = [joined] + [fields] * (layers - LIFT_AFTER - 1) + [velocity]
    head = _plume.steerable_stack(head_types, _plume.r2conv, k, relax, batch_norm, activate_last=True)
    encoder = _plume.input_encoder(
        frames.size * spec["size"] ** 2, encoder_hidden, lift_fields * gs.regular_repr.size
    )
    tail = _plume.steerable_stack(tail_types, _plume.r2conv, k, relax, batch_norm, activate_last=False)
    return LiftNet(frames, head, encoder, tail, layers, k)


def build_unconstrained(spec: dict, **params) -> _plume.PlumeCNN:
    """A plain CNN of the same depth and kernel whose parameter count is closest to this model's."""
    return _plume.matched_cnn(spec, build(spec, **params))
