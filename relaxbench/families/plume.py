"""Shared parts of the smoke-plume forecasters (models ``conv``, ``equiv``, ``rsteer``, ``lift``).

Every plume model takes the task's batch ``batch["frames"] [B, T_in, 2, H, W]`` (a window of past velocity
fields; channel 0 is the component along W, channel 1 the one along H) and returns the next velocity field
``[B, 2, H, W]``. The task's spec is ``{"kind": "plume", "symmetry": "rotation" | "scale", "in_frames": T_in,
"size": H}``; every model dispatches on ``symmetry`` (rotation: C4 models, scale: scale models).

For the C4 models the frames are ``T_in`` copies of escnn's ``irrep(1)`` of ``rot2dOnR2(4)`` (the frames'
channels stacked frame-major, ``[B, 2 T_in, H, W]``) and the output is one ``irrep(1)`` field; hidden features
are regular fields. A quarter turn ``g`` acts as escnn's ``GeometricTensor.transform``: the grid is rotated and
each vector by ``rho(g)``; on a square grid with zero "same" padding this is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from escnn import gspaces
from escnn import nn as enn
from torch import Tensor, nn

from relaxbench.families import fields
from relaxbench.families.scale import RelaxedScaleLift, ScaleConv

__all__ = [
    "KERNEL_SIZE",
    "SCALES",
    "SYMMETRIES",
    "PlumeCNN",
    "RelaxOptions",
    "ScaleNet",
    "SteerableNet",
    "c4_net",
    "c4_types",
    "check_spec",
    "cnn_parameters",
    "input_encoder",
    "kernel_size_for",
    "matched_cnn",
    "parameter_count",
    "r2conv",
    "scale_net",
    "stack_frames",
    "steerable_stack",
]

SYMMETRIES = ("rotation", "scale")

ConvFactory = Callable[..., enn.R2Conv]  # (in_type, out_type, kernel_size, padding=...) -> an R2Conv


def check_spec(spec: Mapping, model: str) -> str:
    """The spec's symmetry; raises ``ValueError`` naming the key and the choices for a spec that is not a
    plume spec."""
    if spec.get("kind") != "plume":
        raise ValueError(
            f"model {model!r} forecasts smoke plumes: needs a spec of kind 'plume', got {spec!r}"
        )
    symmetry = spec.get("symmetry")
    if symmetry not in SYMMETRIES:
        raise ValueError(
            f"model {model!r}: spec key 'symmetry' must be one of {list(SYMMETRIES)}, got {symmetry!r}"
        )
    return symmetry


#: Per-symmetry defaults of the kernel size (the paper's: 3 for the C4 models, 5 for the scale models).
KERNEL_SIZE = {"rotation": 3, "scale": 5}
#: The scales of the scale models' scale axis (the paper's).
SCALES = (1.0, 1.5, 2.0, 2.5)


def kernel_size_for(symmetry: str, kernel_size: int | None) -> int:
    """``kernel_size``, or the symmetry's default when it is ``None``."""
    return KERNEL_SIZE[symmetry] if kernel_size is None else kernel_size


def stack_frames(batch: Mapping[str, Tensor]) -> Tensor:
    """``batch["frames"] [B, T, 2, H, W]`` -> ``[B, 2 T, H, W]`` (frame-major: frame t is channels 2t, 2t + 1)."""
    return batch["frames"].flatten(1, 2)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class PlumeCNN(nn.Module):
    """A plain CNN forecaster (no symmetry): ``frames [B, T, 2, H, W] -> [B, 2, H, W]``.

    ``layers`` convolutions ``k x k`` with zero "same" padding and biases: ``2 T -> hidden``, ``layers - 2``
    times ``hidden -> hidden`` (each followed by ``BatchNorm2d`` and ReLU), ``hidden -> 2``.
    """

    def __init__(self, in_frames: int, hidden: int, layers: int, kernel_size: int) -> None:
        super().__init__()
        if layers < 2:
            raise ValueError(f"layers must be >= 2, got {layers}")
        widths = [2 * in_frames] + [hidden] * (layers - 1)
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:]):
            blocks += [
                nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        blocks.append(nn.Conv2d(hidden, 2, kernel_size, padding=kernel_size // 2))
        self.net = nn.Sequential(*blocks)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.net(stack_frames(batch))


def cnn_parameters(in_frames: int, hidden: int, layers: int, kernel_size: int) -> int:
    """Trainable parameters of :class:`PlumeCNN` with these sizes (without building it)."""
    widths = [2 * in_frames] + [hidden] * (layers - 1)
    hidden_convs = sum(a * b * kernel_size**2 + 3 * b for a, b in zip(widths, widths[1:]))
    return hidden_convs + hidden * 2 * kernel_size**2 + 2


def matched_cnn(spec: Mapping, model: nn.Module) -> PlumeCNN:
    """A :class:`PlumeCNN` with ``model``'s ``layers`` and ``kernel_size`` whose width makes its parameter count
    closest to ``model``'s (the "same depth and parameter budget" baseline of an equivariant model)."""
    target, layers, kernel_size = parameter_count(model), model.layers, model.kernel_size

    def count(width: int) -> int:
        return cnn_parameters(spec["in_frames"], width, layers, kernel_size)

    width = 1
    while count(width + 1) <= target:
        width += 1
    if abs(count(width + 1) - target) < abs(count(width) - target):
        width += 1
    return PlumeCNN(spec["in_frames"], width, layers, kernel_size)


def c4_types(in_frames: int, hidden: int) -> tuple[enn.FieldType, enn.FieldType, enn.FieldType]:
    """``(frames, hidden, velocity)`` field types on ``rot2dOnR2(4)``: ``in_frames`` x ``irrep(1)``,
    ``hidden`` regular fields, one ``irrep(1)``."""
    gs = gspaces.rot2dOnR2(4)
    return (
        enn.FieldType(gs, in_frames * [gs.irrep(1)]),
        enn.FieldType(gs, hidden * [gs.regular_repr]),
        enn.FieldType(gs, [gs.irrep(1)]),
    )


@dataclass(frozen=True)
class RelaxOptions:
    """Whether and how a plume model's convolutions are relaxed (the paper's free ``Conv2d`` beside them): every
    C4 convolution of a steerable stack (:meth:`wrap`: :class:`~relaxbench.families.fields.RelaxedR2Conv`, the
    90-degree rotation as penalty generator), or the first layer of a scale network
    (:class:`~relaxbench.families.scale.RelaxedScaleLift`).

    Attributes:
        relaxed: build the relaxed layers (``False``: the plain convolutions themselves).
        free_init_std: standard deviation of the free kernels at initialisation.
        penalty_examples: examples of each batch the penalty is evaluated on (``None``: all).
    """

    relaxed: bool
    free_init_std: float = 1e-4
    penalty_examples: int | None = 4

    def wrap(self, conv: enn.R2Conv) -> enn.EquivariantModule:
        return fields.relax(conv, self.relaxed, "grid", self.free_init_std, self.penalty_examples)


def steerable_stack(
    types: Sequence[enn.FieldType],
    conv: ConvFactory,
    kernel_size: int,
    relax: RelaxOptions,
    batch_norm: bool,
    activate_last: bool,
) -> enn.SequentialModule:
    """Convolutions ``types[0] -> types[1] -> ... -> types[-1]`` (``conv`` builds each with zero "same" padding,
    ``relax`` wraps it), each followed by ``InnerBatchNorm`` (if ``batch_norm``) and ReLU, except the last
    unless ``activate_last``. Hidden types must be regular fields (pointwise ReLU is then equivariant)."""
    modules: list[enn.EquivariantModule] = []
    for i, (t_in, t_out) in enumerate(zip(types, types[1:])):
        modules.append(relax.wrap(conv(t_in, t_out, kernel_size, padding=kernel_size // 2)))
        if i < len(types) - 2 or activate_last:
            if batch_norm:
                modules.append(enn.InnerBatchNorm(t_out))
            modules.append(enn.ReLU(t_out, inplace=True))
    return enn.SequentialModule(*modules)


def r2conv(in_type: enn.FieldType, out_type: enn.FieldType, kernel_size: int, padding: int) -> enn.R2Conv:
    """escnn's ``R2Conv`` with ``recompute=True`` (no kernel basis shared between models, see
    :func:`relaxbench.families.fields.relax`)."""
    return enn.R2Conv(in_type, out_type, kernel_size, padding=padding, recompute=True)


def c4_net(
    spec: Mapping,
    conv: ConvFactory,
    relax: RelaxOptions,
    hidden: int,
    layers: int,
    kernel_size: int,
    batch_norm: bool,
) -> SteerableNet:
    """``layers`` convolutions ``T_in irrep(1) -> hidden regular -> ... -> 1 irrep(1)``, each but the last
    followed by ``InnerBatchNorm`` (if ``batch_norm``) and ReLU."""
    if layers < 2:
        raise ValueError(f"layers must be >= 2, got {layers}")
    frames, fields, velocity = c4_types(spec["in_frames"], hidden)
    types = [frames] + [fields] * (layers - 1) + [velocity]
    body = steerable_stack(types, conv, kernel_size, relax, batch_norm, activate_last=False)
    return SteerableNet(frames, body, layers, kernel_size)


class SteerableNet(nn.Module):
    """A steerable forecaster: ``frames [B, T, 2, H, W]`` as ``in_type`` fields -> ``body`` -> ``[B, 2, H, W]``
    (the tensor of ``body``'s output type).

    Attributes:
        layers, kernel_size: the number of convolutions and their kernel size (for a matched plain CNN).
    """

    def __init__(
        self, in_type: enn.FieldType, body: enn.SequentialModule, layers: int, kernel_size: int
    ) -> None:
        super().__init__()
        self.in_type, self.body = in_type, body
        self.layers, self.kernel_size = layers, kernel_size

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.body(enn.GeometricTensor(stack_frames(batch), self.in_type)).tensor


def input_encoder(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """The Lift models' MLP of the flattened input window: ``Linear -> BatchNorm1d -> ReLU`` twice, then
    ``Linear(hidden -> out_features)``."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, out_features),
    )


class ScaleNet(nn.Module):
    """A scale-steerable forecaster: ``frames [B, T, 2, H, W]`` (``2 T`` channels) -> ``convs[0]`` (a lifting
    :class:`~relaxbench.families.scale.ScaleConv`, possibly relaxed) -> ReLU -> ... -> ``convs[-1]`` (to 2
    channels) -> mean over the scale axis -> ``[B, 2, H, W]``.

    With an ``encoder`` (the Lift model), its output on the flattened window joins as extra channels, constant
    over space and scales, before convolution ``lift_after``.

    Attributes:
        layers, kernel_size: the number of convolutions and their kernel size (for a matched plain CNN).
    """

    def __init__(
        self,
        convs: Sequence[nn.Module],
        kernel_size: int,
        encoder: nn.Module | None = None,
        lift_after: int = 2,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.encoder, self.lift_after = encoder, lift_after
        self.layers, self.kernel_size = len(convs), kernel_size

    def per_scale(self, batch: Mapping[str, Tensor]) -> Tensor:
        """``[B, 2, S, H, W]``: the output channels at every scale, before the mean over scales."""
        x = stack_frames(batch)
        h = x
        for i, conv in enumerate(self.convs):
            if self.encoder is not None and i == self.lift_after:
                extra = self.encoder(x.flatten(1))[:, :, None, None, None].expand(-1, -1, *h.shape[2:])
                h = torch.cat([h, extra], 1)
            h = conv(h)
            if i < len(self.convs) - 1:
                h = torch.relu(h)
        return h

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.per_scale(batch).mean(2)


def scale_net(
    spec: Mapping,
    relax: RelaxOptions,
    hidden: int,
    layers: int,
    kernel_size: int,
    scales: Sequence[float],
    effective_size: int,
    per_position: bool = False,
    encoder_hidden: int | None = None,
    lift_channels: int = 0,
) -> ScaleNet:
    """``layers`` scale-steerable convolutions ``2 T_in -> hidden -> ... -> hidden -> 2`` (the first lifts to the
    scale axis and carries the paper's relaxation if ``relax.relaxed``); ``per_position``: the relaxed
    scale-steerable (RSteer) form; ``encoder_hidden``: the Lift model, whose encoder adds ``lift_channels``
    before the third convolution."""
    if layers < 2:
        raise ValueError(f"layers must be >= 2, got {layers}")
    outs = [hidden] * (layers - 1) + [2]
    ins = [2 * spec["in_frames"]] + outs[:-1]
    encoder = None
    if encoder_hidden is not None:
        if layers <= 2:
            raise ValueError(f"a Lift model needs layers > 2, got {layers}")
        encoder = input_encoder(ins[0] * spec["size"] ** 2, encoder_hidden, lift_channels)
        ins[2] += lift_channels
    convs: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(ins, outs)):
        conv = ScaleConv(
            c_in, c_out, kernel_size, scales, effective_size, lift=i == 0, per_position=per_position
        )
        if i == 0 and relax.relaxed:
            conv = RelaxedScaleLift(conv, relax.free_init_std, relax.penalty_examples)
        convs.append(conv)
    return ScaleNet(convs, kernel_size, encoder)
