"""An escnn steerable CNN image classifier (C_N, D_N or SO(2)) with invariant logits, relaxable per conv.

Takes ``batch["image"] [B, C, S, S]`` (``C`` trivial fields, ``S`` odd) and returns logits
``[B, num_classes]``, invariant under the group's rotations (exactly, up to float32 basis rounding, for
those that act on the pixel grid: multiples of 90 degrees when the group contains them).

Architecture, one block per entry of ``channels``:
``R2Conv(k x k, zero "same" padding) -> batch norm -> nonlinearity [-> 3x3 average pool, stride 2]``, then
invariant group pooling, global spatial averaging and an MLP head ``Linear -> ReLU -> Linear``.

- ``group="C"`` / ``"D"`` (``N`` rotations, and reflections for D): ``channels[i]`` regular fields,
  ``InnerBatchNorm``, ``ReLU``, ``GroupPooling`` (max over each regular field).
- ``group="SO2"``: ``channels[i]`` band-limited regular fields (irreps of frequency 0..``max_frequency``),
  ``IIDBatchNorm2d``, ``FourierPointwise`` ReLU on ``fourier_samples`` rotations, and the norm of each
  irrep as invariants (``NormPool``).

Pools must act on odd sizes (29 -> 15 -> 8): a stride-2 pool of an even map is not symmetric about its
centre and would break exact rot90 equivariance, so such a plan is refused.

Relaxed (``relaxed=True``): every ``R2Conv`` becomes a :class:`~relaxbench.families.fields.RelaxedR2Conv`
whose free branch is a bias-free ``Conv2d`` over all channels with the same kernel, added before the batch
norm and nonlinearity; ``generators`` chooses the penalty's group elements (see
:mod:`relaxbench.families.fields`). :meth:`SteerableCNN.export_for_eval` turns a projected C/D model into
plain torch modules with escnn's ``export()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from escnn import gspaces
from escnn import nn as enn
from torch import Tensor, nn

from relaxbench.families import fields, relaxed_layers
from relaxbench.families.blocks import matched_cnn

__all__ = ["FAMILY", "TASK_KINDS", "SteerableCNN", "build", "build_unconstrained"]

FAMILY = "steerable_cnn"
#: task kinds this model supports -> the group it respects on them
TASK_KINDS = {"image_classification": "C_N, D_N or SO(2) (the group parameter)"}


class _AvgPool(enn.PointwiseAvgPool2D):
    """3x3 average pooling with stride 2 and padding 1 on any field type (linear, so equivariant for every
    representation); exports to ``torch.nn.AvgPool2d``."""

    def __init__(self, in_type: enn.FieldType) -> None:
        super().__init__(in_type, kernel_size=3, stride=2, padding=1)

    def export(self) -> nn.AvgPool2d:
        self.eval()
        return nn.AvgPool2d(self.kernel_size, self.stride, self.padding, self.ceil_mode)


class _GroupPooling(enn.GroupPooling):
    """Max over each regular field (``c`` regular fields -> ``c`` trivial fields), keeping the input dtype
    (escnn's ``GroupPooling.forward`` always returns float32); exports like escnn's (``MaxPoolChannels``)."""

    def forward(self, x: enn.GeometricTensor) -> enn.GeometricTensor:
        t = x.tensor
        pooled = t.unflatten(1, (len(self.in_type), -1)).amax(2)
        return enn.GeometricTensor(pooled, self.out_type)


class _IrrepNormPool(enn.EquivariantModule):
    """Invariants of band-limited regular SO(2) fields: the norm of every irrep component of every field.

    ``in_type``: ``c`` identical fields, each a direct sum of irreps (identity change of basis) ->
    ``out_type``: ``c * n_irreps`` trivial fields. Keeps the input dtype (escnn's ``NormPool`` returns float32).
    """

    def __init__(self, in_type: enn.FieldType) -> None:
        super().__init__()
        rep = in_type.representations[0]
        if any(r != rep for r in in_type.representations) or not np.allclose(
            rep.change_of_basis, np.eye(rep.size)
        ):
            raise ValueError("_IrrepNormPool needs identical fields made of irreps in their own basis")
        self.sizes = [in_type.fibergroup.irrep(*irrep).size for irrep in rep.irreps]
        self.in_type = in_type
        self.out_type = enn.FieldType(
            in_type.gspace, len(in_type) * len(self.sizes) * [in_type.gspace.trivial_repr]
        )

    def forward(self, x: enn.GeometricTensor) -> enn.GeometricTensor:
        fields = x.tensor.unflatten(1, (len(self.in_type), -1))  # [B, c, field size, H, W]
        norms = torch.stack([part.norm(dim=2) for part in fields.split(self.sizes, dim=2)], 2)
        return enn.GeometricTensor(norms.flatten(1, 2), self.out_type)

    def evaluate_output_shape(self, input_shape):
        return (input_shape[0], self.out_type.size, *input_shape[2:])


def make_gspace(group: str, n: int, max_frequency: int):
    """escnn's 2D gspace for ``group`` in ``{"C", "D", "SO2"}`` (``n`` rotations for C and D)."""
    if group == "C":
        return gspaces.rot2dOnR2(n)
    if group == "D":
        return gspaces.flipRot2dOnR2(n)
    if group == "SO2":
        return gspaces.rot2dOnR2(-1, maximum_frequency=max_frequency)
    raise ValueError(f"group must be 'C', 'D' or 'SO2', got {group!r}")


def pool_plan(size: int, n_blocks: int, pool_after: Sequence[int] | None) -> list[int]:
    """The blocks followed by a stride-2 pool (default: all but the last).

    Raises ``ValueError`` when a pool would act on an even map size (not symmetric, breaks exact rot90).
    """
    pools = list(range(n_blocks - 1)) if pool_after is None else sorted(set(pool_after))
    if any(not 0 <= i < n_blocks for i in pools):
        raise ValueError(f"pool_after must index blocks 0..{n_blocks - 1}, got {list(pool_after)}")
    for i in pools:  # sorted: each pool halves the (odd) size the previous ones left
        if size % 2 == 0:
            raise ValueError(
                f"block {i} would pool a {size}x{size} map with stride 2, which breaks exact "
                "rot90 equivariance; use an odd input size or fewer pools"
            )
        size = (size + 1) // 2
    return pools


class SteerableCNN(nn.Module):
    """Steerable CNN classifier: ``batch["image"] [B, C, S, S]`` -> invariant logits ``[B, num_classes]``.

    Attributes:
        in_type: ``C`` trivial fields. Each block's ``out_type``: the hidden fields described above.
    """

    def __init__(
        self,
        spec: dict,
        group: str,
        n: int,
        channels: Sequence[int],
        kernel_size: int,
        pool_after: Sequence[int] | None,
        head_hidden: int,
        max_frequency: int,
        fourier_samples: int,
        relaxed: bool,
        generators: fields.Generators,
        free_init_std: float,
        penalty_examples: int | None,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (centred 'same' padding), got {kernel_size}")
        if group == "SO2" and fourier_samples % 4:
            raise ValueError(f"fourier_samples must be a multiple of 4 (exact rot90), got {fourier_samples}")
        self.pools = pool_plan(spec["size"], len(channels), pool_after)
        self.n_blocks, self.kernel_size, self.head_hidden = len(channels), kernel_size, head_hidden
        gs = make_gspace(group, n, max_frequency)
        self.group = group
        self.in_type = enn.FieldType(gs, spec["channels"] * [gs.trivial_repr])
        modules, current = [], self.in_type
        for i, width in enumerate(channels):
            if group == "SO2":
                irreps = [(f,) for f in range(max_frequency + 1)]
                act = enn.FourierPointwise(gs, width, irreps, function="p_relu", N=fourier_samples)
                hidden, norm = act.in_type, enn.IIDBatchNorm2d(act.in_type)
            else:
                hidden = enn.FieldType(gs, width * [gs.regular_repr])
                norm, act = enn.InnerBatchNorm(hidden), enn.ReLU(hidden, inplace=True)
            modules += [
                fields.relax(
                    # recompute: no sampled basis shared with other models (see fields.relax)
                    enn.R2Conv(current, hidden, kernel_size, padding=kernel_size // 2, recompute=True),
                    relaxed,
                    generators,
                    free_init_std,
                    penalty_examples,
                ),
                norm,
                act,
            ]
            if i in self.pools:
                modules.append(_AvgPool(hidden))
            current = hidden
        self.body = enn.SequentialModule(*modules)
        group_pool = _IrrepNormPool(current) if group == "SO2" else _GroupPooling(current)
        self.invariant = enn.SequentialModule(
            group_pool, enn.PointwiseAdaptiveAvgPool2D(group_pool.out_type, 1)
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(group_pool.out_type.size, head_hidden),
            nn.ReLU(),
            nn.Linear(head_hidden, spec["num_classes"]),
        )

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        x = enn.GeometricTensor(batch["image"], self.in_type)
        return self.head(self.invariant(self.body(x)).tensor)

    def export_for_eval(self) -> nn.Module:
        """Plain-torch copy of the projected model for evaluation (``batch -> logits``), via escnn ``export()``.

        escnn copies weights into float32 modules, which are then cast to the model's dtype (so a float64
        model's export agrees with it to float32 rounding). Returns ``self`` where escnn cannot export (SO(2):
        ``FourierPointwise`` and ``NormPool`` have no export) or the model is not projected (a relaxed layer
        with theta > 0). Puts the model in eval mode.
        """
        self.eval()
        if self.group == "SO2" or any(layer.theta != 0.0 for layer in relaxed_layers(self)):
            return self
        dtype = next(self.parameters()).dtype  # escnn exports float32 modules
        return (
            _Exported(nn.Sequential(self.body.export(), self.invariant.export(), self.head)).to(dtype).eval()
        )


class _Exported(nn.Module):
    """An exported steerable CNN: ``batch["image"] [B, C, S, S]`` -> logits ``[B, num_classes]``."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.net(batch["image"])


def build(
    spec: dict,
    relaxed: bool = False,
    group: str = "C",
    N: int = 8,
    channels: Sequence[int] = (8, 16, 16),
    kernel_size: int = 5,
    pool_after: Sequence[int] | None = None,
    head_hidden: int = 64,
    max_frequency: int = 3,
    fourier_samples: int = 16,
    generators: fields.Generators = "full",
    free_init_std: float = 1e-4,
    penalty_examples: int | None = 4,
) -> SteerableCNN:
    """A steerable CNN for an image-classification spec (``channels``, ``size``, ``num_classes``).

    Defaults are CPU scale (C8, 8/16/16 regular fields, 5x5 kernels). The escnn tutorial's C8 MNIST model is
    about ``channels=[24, 48, 48, 96, 96, 64], kernel_size=5, pool_after=[1, 3]``. ``generators``,
    ``free_init_std`` and ``penalty_examples`` configure the relaxed convolutions
    (:class:`~relaxbench.families.fields.RelaxedR2Conv`). By default the penalty is evaluated on 4 examples of
    each batch (an unbiased estimate at a fraction of the cost; measurements in docs/PERFORMANCE.md);
    ``penalty_examples=None`` uses the whole batch.
    """
    return SteerableCNN(
        spec,
        group,
        N,
        tuple(channels),
        kernel_size,
        pool_after,
        head_hidden,
        max_frequency,
        fourier_samples,
        relaxed,
        generators,
        free_init_std,
        penalty_examples,
    )


def build_unconstrained(spec: dict, **params) -> nn.Module:
    """A plain CNN (:class:`relaxbench.families.blocks.CNN`, the ``cnn`` model) with the same blocks and about
    the same parameter count."""
    model = build(spec, **params)
    target = sum(p.numel() for p in model.parameters())
    return matched_cnn(spec, target, model.n_blocks, model.kernel_size, model.pools, model.head_hidden)
