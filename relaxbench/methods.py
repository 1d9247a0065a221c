"""Training recipes: standard equivariant training, the paper's relaxation, its ablations and baselines.

A :class:`Method` is one declaration; a config may override any field per method name. Penalty weights
follow the published N-body / VN-PointNet experiments (``lambda = 0.01`` on both terms).

========================  ==================================================================================
``equivariant``           standard training of the plain equivariant model (no relaxed layers)
``relaxed``               the paper: triangular theta per epoch, Lie + norm penalties, evaluated projected
``relaxed_no_schedule``   ablation: constant theta = 0.1 during training (the published scripts' default
                          without ``--cycle``), still projected at evaluation
``relaxed_no_lie``        ablation: only the activation-norm penalty
``relaxed_no_reg``        ablation: no regulariser at all
``rpp``                   residual pathway prior (Finzi et al. 2021): free branch always on (theta = 1),
                          stronger L2 on it, no Lie penalty and no projection (softly equivariant result)
``unconstrained``         a non-equivariant model of similar size (the model's ``build_unconstrained``, or
                          else its relaxed twin with theta fixed at 1 and no penalty)
========================  ==================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from relaxbench.errors import UserError
from relaxbench.relax.schedules import SCHEDULES, Schedule

__all__ = ["METHODS", "Method", "MethodError", "get_method"]

VARIANTS = ("equivariant", "relaxed", "unconstrained")


class MethodError(UserError):
    """An unknown method or a bad override (the message lists the choices)."""


@dataclass(frozen=True)
class Method:
    """One training recipe.

    Attributes:
        name: the method's name in configs and records.
        variant: which model is built: ``equivariant`` (plain), ``relaxed`` (with free branches) or
            ``unconstrained``.
        schedule: theta schedule during training (see :mod:`relaxbench.relax.schedules`).
        theta_peak: the schedule's maximum theta.
        lambda_lie, lambda_norm: weights of ``sqrt(ld + eps)`` and ``sqrt(norm + eps)``.
        lie_times_theta: multiply the regulariser by theta (the VN-DGCNN variant).
        free_l2: weight of an L2 penalty on the free-branch parameters (residual pathway prior).
        project: evaluate at theta = 0 (the paper's projection); otherwise at the last training theta.
        eps: inside the square roots; keeps gradients finite where a free map is exactly zero.
    """

    name: str
    variant: str = "equivariant"
    schedule: str = "none"
    theta_peak: float = 1.0
    lambda_lie: float = 0.0
    lambda_norm: float = 0.0
    lie_times_theta: bool = False
    free_l2: float = 0.0
    project: bool = True
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise MethodError(f"method {self.name!r}: variant must be one of {list(VARIANTS)}")
        if self.schedule not in SCHEDULES:
            raise MethodError(f"method {self.name!r}: schedule must be one of {sorted(SCHEDULES)}")

    @property
    def relaxed(self) -> bool:
        """Whether the model carries free branches during training."""
        return self.variant == "relaxed"

    def theta_schedule(self, epochs: int) -> Schedule:
        return Schedule(self.schedule, epochs, self.theta_peak)

    def eval_theta(self, last_train_theta: float) -> float:
        """theta for evaluation: 0 when projecting, else the theta the model last trained with."""
        return 0.0 if self.project else last_train_theta


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("equivariant"),
        Method("relaxed", "relaxed", "triangle", lambda_lie=0.01, lambda_norm=0.01),
        Method(
            "relaxed_no_schedule", "relaxed", "constant", theta_peak=0.1, lambda_lie=0.01, lambda_norm=0.01
        ),
        Method("relaxed_no_lie", "relaxed", "triangle", lambda_norm=0.01),
        Method("relaxed_no_reg", "relaxed", "triangle"),
        Method("rpp", "relaxed", "constant", theta_peak=1.0, free_l2=0.01, project=False),
        Method("unconstrained", "unconstrained"),
    )
}


def get_method(name: str, overrides: Mapping[str, Any] | None = None) -> Method:
    """The method ``name`` with config ``overrides`` applied; unknown names and fields list the choices."""
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; choices: {sorted(METHODS)}")
    overrides = dict(overrides or {})
    allowed = {f.name for f in fields(Method)} - {"name"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise MethodError(f"method {name!r}: unknown field(s) {unknown}; choices: {sorted(allowed)}")
    return replace(METHODS[name], **overrides)
