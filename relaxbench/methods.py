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
``relaxed_published_lie`` ablation: the paper's method with the Lie penalty in the published code's layout
                          (generator-major outputs split component-major, shared/METHOD.md section 4.1), which
                          also penalises equivariant free maps; dense Lie-algebra penalties only (refused for
                          the families in ``families``' complement, with the reason)
``dual_ascent``           after ACE (Manolache, Chamon, Niepert, NeurIPS 2025): a trained mixing weight
                          ``gamma_i`` per relaxed layer (start 1) under the constraint ``gamma_i = 0``, enforced
                          by dual ascent on multipliers ``lambda_i`` once per step; evaluated projected
                          (:mod:`relaxbench.relax.dual` has the equations)
``dual_ascent_resilient`` the same with ``|gamma_i| <= u_i``, slacks paying ``rho u_i^2 / 2``; evaluated with the
                          learned ``gamma_i``, so only approximately equivariant (like ``rpp``)
``symmetrised``           the unconstrained model averaged over a frame (Puny et al. ICLR 2022; equi-tuning,
                          Basu et al. AAAI 2023), at training and at test: PCA frames for point sets, the C4
                          rotations on images (:mod:`relaxbench.symmetrise`); exactly invariant / equivariant
========================  ==================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from relaxbench.errors import UserError
from relaxbench.relax import free_parameters, prior_penalty, relaxation_penalty
from relaxbench.relax.dual import dual_penalty
from relaxbench.relax.schedules import SCHEDULES, Schedule

__all__ = ["METHODS", "Method", "MethodError", "get_method", "regulariser"]

VARIANTS = ("equivariant", "relaxed", "unconstrained", "symmetrised")
DUAL = ("none", "exact", "resilient")
LIE_LAYOUTS = ("correct", "published")
#: Fields a config may not override (they describe what a method is, not how it is tuned).
FIXED = ("name", "families", "refusal")


class MethodError(UserError):
    """An unknown method or a bad override (the message lists the choices)."""


@dataclass(frozen=True)
class Method:
    """One training recipe.

    Attributes:
        name: the method's name in configs and records.
        variant: which model is built: ``equivariant`` (plain), ``relaxed`` (with free branches),
            ``unconstrained``, or ``symmetrised`` (the unconstrained model averaged over a frame).
        schedule: theta schedule during training (see :mod:`relaxbench.relax.schedules`).
        theta_peak: the schedule's maximum theta.
        lambda_lie, lambda_norm: weights of ``sqrt(ld + eps)`` and ``sqrt(norm + eps)``.
        penalty_times_theta: multiply both penalty terms (Lie and norm) by theta (the VN-DGCNN variant).
        free_l2: weight of an L2 penalty on the free-branch parameters (residual pathway prior).
        project: evaluate at theta = 0 (the paper's projection); otherwise at the last training theta.
        eps: inside the square roots; keeps gradients finite where a free map is exactly zero.
        dual: ``"none"``, or dual ascent on per-layer mixing weights: ``"exact"`` (constraint ``gamma_i = 0``) or
            ``"resilient"`` (``|gamma_i| <= u_i``); see :mod:`relaxbench.relax.dual`.
        eta_dual: dual step size (per optimiser step); rho: the resilient slack's cost ``rho u^2 / 2``.
        lie_layout: ``"correct"`` (relaxbench's Lie derivative) or ``"published"`` (the published code's reshape).
        families: the model families the method applies to (``None``: every family); the config check refuses
            other families before any job, quoting ``refusal``.
    """

    name: str
    variant: str = "equivariant"
    schedule: str = "none"
    theta_peak: float = 1.0
    lambda_lie: float = 0.0
    lambda_norm: float = 0.0
    penalty_times_theta: bool = False
    free_l2: float = 0.0
    project: bool = True
    eps: float = 1e-8
    dual: str = "none"
    eta_dual: float = 0.1
    rho: float = 1.0
    lie_layout: str = "correct"
    families: tuple[str, ...] | None = None
    refusal: str = ""

    def __post_init__(self) -> None:
        for key, value, choices in (
            ("variant", self.variant, VARIANTS),
            ("schedule", self.schedule, tuple(sorted(SCHEDULES))),
            ("dual", self.dual, DUAL),
            ("lie_layout", self.lie_layout, LIE_LAYOUTS),
        ):
            if value not in choices:
                raise MethodError(
                    f"method {self.name!r}: {key} must be one of {list(choices)}, got {value!r}"
                )
        if self.dual != "none" and self.variant != "relaxed":
            raise MethodError(f"method {self.name!r}: dual ascent needs variant 'relaxed'")
        if self.dual != "none" and (self.eta_dual <= 0 or self.rho <= 0):
            raise MethodError(f"method {self.name!r}: eta_dual and rho must be > 0")
        if self.lie_layout == "published" and not (self.variant == "relaxed" and self.lambda_lie > 0):
            raise MethodError(
                f"method {self.name!r}: lie_layout 'published' needs a relaxed variant and lambda_lie > 0"
            )

    def params(self) -> dict[str, Any]:
        """The fields a config may set (everything but what the method is: name, families, refusal)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in FIXED}

    def refuses(self, family: str) -> str | None:
        """Why the method cannot run on a model of ``family``, or ``None`` if it can."""
        if self.families is None or family in self.families:
            return None
        return f"method {self.name!r} does not apply to family {family!r}: {self.refusal}"

    @property
    def relaxed(self) -> bool:
        """Whether the model carries free branches during training."""
        return self.variant == "relaxed"

    def theta_schedule(self, epochs: int) -> Schedule:
        return Schedule(self.schedule, epochs, self.theta_peak)

    def as_relaxed_twin(self) -> Method:
        """``unconstrained`` for a model without ``build_unconstrained``: its relaxed twin trained with theta fixed
        at 1, no penalty, and evaluated as trained (no projection)."""
        return replace(
            self, schedule="constant", theta_peak=1.0, project=False, lambda_lie=0.0, lambda_norm=0.0
        )

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
        Method(
            "relaxed_published_lie",
            "relaxed",
            "triangle",
            lambda_lie=0.01,
            lambda_norm=0.01,
            lie_layout="published",
            families=("tensor_field", "gnn", "baseline", "vector_neurons"),
            refusal=(
                "the published reshape mistake is in the Lie-algebra penalty of dense free maps (the VN and "
                "SEGNN code); the steerable CNN penalises finite group elements and the Equiformer code finite "
                "rotations, which the published code never stacked"
            ),
        ),
        Method("dual_ascent", "relaxed", "constant", theta_peak=1.0, dual="exact"),
        Method(
            "dual_ascent_resilient", "relaxed", "constant", theta_peak=1.0, dual="resilient", project=False
        ),
        Method("symmetrised", "symmetrised"),
    )
}


def get_method(name: str, overrides: Mapping[str, Any] | None = None) -> Method:
    """The method ``name`` with config ``overrides`` applied; unknown names and fields list the choices."""
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; choices: {sorted(METHODS)}")
    overrides = dict(overrides or {})
    allowed = {f.name for f in fields(Method)} - set(FIXED)
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise MethodError(f"method {name!r}: unknown field(s) {unknown}; choices: {sorted(allowed)}")
    return replace(METHODS[name], **overrides)


def regulariser(model: nn.Module, method: Method, theta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The method's penalty for the last forward pass: ``lambda_lie * lie + lambda_norm * norm`` (times theta
    for the ``penalty_times_theta`` variant) plus ``free_l2 * ||free params||^2``, plus the architecture's own weight
    prior under every method (:mod:`relaxbench.relax.prior`, e.g. RSteer's smoothness), plus the dual-ascent term
    ``sum_i lambda_i |gamma_i|`` for those methods; also the raw terms for logging (``prior`` weighted, as it
    enters the loss)."""
    pen = relaxation_penalty(model, lie=method.lambda_lie > 0, norm=method.lambda_norm > 0, eps=method.eps)
    reg = method.lambda_lie * pen["lie"] + method.lambda_norm * pen["norm"]
    if method.penalty_times_theta:
        reg = reg * theta
    if method.free_l2 > 0:
        reg = reg + method.free_l2 * sum(p.pow(2).sum() for p in free_parameters(model))
    if method.dual != "none":
        reg = reg + dual_penalty(model)
    prior = prior_penalty(model)
    if prior is not None:
        reg = reg + prior
    terms = {"lie": pen["lie"].item(), "norm": pen["norm"].item()}
    return reg, {**terms, "prior": 0.0 if prior is None else prior.item()}
