"""``equiv``: the C4-equivariant steerable CNN forecaster of smoke plumes (the E2CNN baseline of Wang et al.).

Rotation spec (see :mod:`relaxbench.models._plume`): ``frames [B, T_in, 2, H, W]`` as ``T_in`` x ``irrep(1)``
fields of ``rot2dOnR2(4)`` -> ``layers`` escnn ``R2Conv`` (``kernel_size``, zero "same" padding, escnn's
equivariant bias): ``T_in irrep(1) -> hidden regular -> ... -> hidden regular -> 1 irrep(1)``, each but the last
followed by ``InnerBatchNorm`` (if ``batch_norm``) and ReLU. Returns the next velocity field ``[B, 2, H, W]``,
exactly C4-equivariant on a square grid (up to escnn's float32 kernel basis).

Relaxed (``relaxed=True``, the paper's method): every ``R2Conv`` becomes a
:class:`~relaxbench.families.fields.RelaxedR2Conv` (a free bias-free ``Conv2d`` over all channels beside it,
scaled by theta; Lie penalty with the 90-degree rotation). The method ``rpp`` (free branch always on, L2 on
it) is the RPP baseline of Wang et al.; ``unconstrained`` builds :func:`build_unconstrained`.

Parameters (CPU-scale defaults; the paper's sizes in configs/paper.yaml): ``hidden`` regular fields (8; each 4
channels), ``layers`` (5), ``kernel_size`` (3), ``batch_norm`` (True, as published), ``free_init_std`` (1e-4),
``penalty_examples`` (4).
"""

from __future__ import annotations

from torch import nn

from relaxbench.models import _plume
from relaxbench.models._plume import RelaxOptions

__all__ = ["FAMILY", "build", "build_unconstrained"]

FAMILY = "steerable_cnn"


def build(
    spec: dict,
    relaxed: bool = False,
    hidden: int = 8,
    layers: int = 5,
    kernel_size: int = 3,
    batch_norm: bool = True,
    free_init_std: float = 1e-4,
    penalty_examples: int | None = 4,
) -> nn.Module:
    """The C4 steerable CNN for a plume spec (module docstring)."""
    if _plume.check_spec(spec, "equiv") != "rotation":
        raise ValueError("model 'equiv': the scale form is not built yet; choices for symmetry: ['rotation']")
    relax = RelaxOptions(relaxed, free_init_std, penalty_examples)
    return _plume.c4_net(spec, _plume.r2conv, relax, hidden, layers, kernel_size, batch_norm)


def build_unconstrained(spec: dict, **params) -> nn.Module:
    """A plain CNN (:class:`~relaxbench.models._plume.PlumeCNN`) of the same depth and kernel whose parameter
    count is closest to this model's."""
    return _plume.matched_cnn(spec, build(spec, **params))
