"""``conv``: the plain CNN forecaster of smoke plumes (the Conv baseline of Wang et al.), no symmetry.

``frames [B, T_in, 2, H, W]`` -> :class:`~relaxbench.families.plume.PlumeCNN` (``layers`` convolutions
``kernel_size``, batch norm and ReLU between them) -> the next velocity field ``[B, 2, H, W]``. The same model for
both symmetries of the plume task.

Parameters: ``layers`` (5), ``kernel_size`` (``null``: 3 for rotation, 5 for scale, as the paper's equivariant
models), and the width: ``hidden`` channels, or by default (``hidden: null``) the width whose parameter count is
closest to the ``equiv`` model of the same spec with ``hidden: match_hidden`` (8, equiv's default) and the same
depth and kernel, so that the Conv and Equiv rows compare at one parameter budget. It has no equivariant layer to
relax: methods ``equivariant`` (plain training) and ``unconstrained``.
"""

from __future__ import annotations

from relaxbench.families import plume as _plume
from relaxbench.families.plume import PlumeCNN, RelaxOptions

__all__ = ["FAMILY", "RELAXABLE", "TASK_KINDS", "build", "build_unconstrained"]

FAMILY = "steerable_cnn"
#: task kinds this model supports -> the group it respects on them
TASK_KINDS = {"plume": "none"}
#: no equivariant layer to relax: the config check refuses the ``relaxed`` methods on this model
RELAXABLE = False


def build(
    spec: dict,
    relaxed: bool = False,
    hidden: int | None = None,
    layers: int = 5,
    kernel_size: int | None = None,
    match_hidden: int = 8,
) -> PlumeCNN:
    """The plain CNN for a plume spec (module docstring); ``relaxed`` is refused."""
    symmetry = _plume.check_spec(spec, "conv")
    if relaxed:
        raise ValueError(
            "model 'conv' has no equivariant layers to relax; use the 'equivariant' or 'unconstrained' method"
        )
    k = _plume.kernel_size_for(symmetry, kernel_size)
    if hidden is not None:
        return PlumeCNN(spec["in_frames"], hidden, layers, k)
    plain = RelaxOptions(False)
    if symmetry == "scale":
        twin = _plume.scale_net(spec, plain, match_hidden, layers, k, _plume.SCALES, 7)
    else:
        twin = _plume.c4_net(spec, _plume.r2conv, plain, match_hidden, layers, k, True)
    return _plume.matched_cnn(spec, twin)


build_unconstrained = build
