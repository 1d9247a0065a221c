"""``equiv``: the equivariant forecaster of smoke plumes (Equiv row of Wang et al.'s Table 2), C4 or scale.

Rotation spec (see :mod:`relaxbench.families.plume`): ``frames [B, T_in, 2, H, W]`` as ``T_in`` x ``irrep(1)``
fields of ``rot2dOnR2(4)`` -> ``layers`` escnn ``R2Conv`` (``kernel_size``, zero "same" padding, escnn's
equivariant bias): ``T_in irrep(1) -> hidden regular -> ... -> hidden regular -> 1 irrep(1)``, each but the last
followed by ``InnerBatchNorm`` (if ``batch_norm``) and ReLU. Returns the next velocity field ``[B, 2, H, W]``,
exactly C4-equivariant on a square grid (up to escnn's float32 kernel basis). Relaxed (``relaxed=True``, the
paper's method): every ``R2Conv`` becomes a :class:`~relaxbench.families.fields.RelaxedR2Conv` (a free bias-free
``Conv2d`` over all channels beside it, scaled by theta; Lie penalty with the 90-degree rotation).

Scale spec: the scale-steerable CNN (:mod:`relaxbench.families.scale`; SESN's Hermite-Gaussian basis on
``scales``, ``effective_size`` orders per axis): ``2 T_in`` channels lifted to ``hidden`` channels per scale,
``layers - 2`` scale convolutions, one to 2 channels, ReLU between them, mean over the scales. Approximately
scale-equivariant (no pixel grid is exactly). Relaxed: the paper's free ``Conv2d`` beside the first (lifting)
layer only, as published (:class:`~relaxbench.families.scale.RelaxedScaleLift`).

The method ``rpp`` (free branches always on, L2 on them) is the RPP baseline of Wang et al.; ``unconstrained``
builds :func:`build_unconstrained`.

Parameters (CPU-scale defaults; the paper's sizes in configs/paper.yaml): ``hidden`` (8: regular fields of 4
channels for rotation, channels per scale for scale), ``layers`` (5), ``kernel_size`` (``null``: 3 for rotation,
5 for scale), ``batch_norm`` (True; rotation only, as published), ``scales`` ([1, 1.5, 2, 2.5]) and
``effective_size`` (7) (scale only), ``free_init_std`` (1e-4), ``penalty_examples`` (4).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from relaxbench.families import plume as _plume
from relaxbench.families.plume import RelaxOptions

__all__ = ["FAMILY", "TASK_KINDS", "build", "build_unconstrained"]

FAMILY = "steerable_cnn"
#: task kinds this model supports -> the group it respects on them
TASK_KINDS = {"plume": "C4 (rotation spec); scale, approximately (scale spec)"}


def build(
    spec: dict,
    relaxed: bool = False,
    hidden: int = 8,
    layers: int = 5,
    kernel_size: int | None = None,
    batch_norm: bool = True,
    scales: Sequence[float] = _plume.SCALES,
    effective_size: int = 7,
    free_init_std: float = 1e-4,
    penalty_examples: int | None = 4,
) -> nn.Module:
    """The equivariant forecaster for a plume spec (module docstring)."""
    symmetry = _plume.check_spec(spec, "equiv")
    k = _plume.kernel_size_for(symmetry, kernel_size)
    relax = RelaxOptions(relaxed, free_init_std, penalty_examples)
    if symmetry == "scale":
        return _plume.scale_net(spec, relax, hidden, layers, k, scales, effective_size)
    return _plume.c4_net(spec, _plume.r2conv, relax, hidden, layers, k, batch_norm)


def build_unconstrained(spec: dict, **params) -> nn.Module:
    """A plain CNN (:class:`~relaxbench.families.plume.PlumeCNN`) of the same depth and kernel whose parameter
    count is closest to this model's."""
    return _plume.matched_cnn(spec, build(spec, **params))
