"""The paper's method, family-agnostic: theta schedules, relaxed layers, Lie-derivative penalties."""

from relaxbench.relax.lie import FeatureAction, lie_derivative_sq, make_finite_action, make_lie_action
from relaxbench.relax.prior import WeightPrior, prior_penalty
from relaxbench.relax.relaxed import (
    FreeShareMeter,
    RelaxedLayer,
    build_free,
    free_parameters,
    relaxation_penalty,
    relaxed_layers,
    set_theta,
    use_published_layout,
)
from relaxbench.relax.schedules import SCHEDULES, Schedule, make_schedule

__all__ = [
    "FeatureAction",
    "FreeShareMeter",
    "RelaxedLayer",
    "SCHEDULES",
    "WeightPrior",
    "Schedule",
    "build_free",
    "free_parameters",
    "lie_derivative_sq",
    "make_finite_action",
    "make_lie_action",
    "make_schedule",
    "prior_penalty",
    "relaxation_penalty",
    "relaxed_layers",
    "set_theta",
    "use_published_layout",
]
