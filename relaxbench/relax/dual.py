"""Per-layer mixing weights under a symmetry constraint, enforced by dual ascent.

The idea is ACE (Adaptive Constrained Equivariance; Manolache, Chamon, Niepert, NeurIPS 2025): instead of one
hand-scheduled theta shared by all relaxed layers, every relaxed layer ``i`` gets its own trained mixing weight
``gamma_i`` (a scalar parameter, starting at 1),

    f_i(x) = f_eq,i(x) + gamma_i W_i(x)          (theta held at 1 while training; theta = 0 projects),

and the return to the symmetric model is a constraint on the ``gamma_i``, enforced with Lagrange multipliers
``lambda_i >= 0`` updated by dual ascent. relaxbench implements the two forms below on its own relaxed layers;
it borrows the idea, not ACE's code or settings, and does not claim to reproduce ACE's numbers.

**Exact symmetry** (method ``dual_ascent``): ``min L(w, gamma)`` subject to ``|gamma_i| <= 0``. Lagrangian

    L(w, gamma) + sum_i lambda_i |gamma_i|.

**Resilient, approximate symmetry** (``dual_ascent_resilient``, resilient constrained learning of Hounie,
Ribeiro, Chamon 2023): ``min L(w, gamma) + sum_i rho u_i^2 / 2`` subject to ``|gamma_i| <= u_i``, slacks
``u_i >= 0``. Lagrangian

    L(w, gamma) + sum_i rho u_i^2 / 2 + sum_i lambda_i (|gamma_i| - u_i).

**One training step** (relaxbench's schedule of the updates):

1. primal: one optimiser step on ``w`` and ``gamma`` of the task loss plus :func:`dual_penalty`,
   ``sum_i lambda_i |gamma_i|`` (``u`` and ``lambda`` are constants of the primal step);
2. dual, after every optimiser step (:func:`dual_step`): with the violation ``v_i = |gamma_i| - u_i``
   (``u_i = 0`` in the exact form),

       lambda_i <- max(0, lambda_i + eta_dual v_i),

   and in the resilient form the slack's closed-form best response ``u_i <- argmin_u rho u^2 / 2 - lambda_i u
   = lambda_i / rho``. At a fixed point ``|gamma_i| = u_i = lambda_i / rho``: the slack a layer keeps grows with
   the gradient the task puts on its ``gamma_i`` and shrinks with ``rho``.

**Evaluation.** The exact form is evaluated projected (theta = 0: every free branch dropped, the plain
equivariant model, as in the paper). The resilient form keeps its learned ``gamma_i`` (theta = 1), so the model
it evaluates is only approximately equivariant, like ``rpp``; records and report say which.

The ``gamma_i`` are parameters of the layers (so the optimiser, checkpoints and ``model.pt`` carry them) and
``lambda_i``, ``u_i`` are buffers of the layers (``dual_lambda``, ``dual_slack``), all created by
:func:`attach_dual` only for these methods: every other method's model is unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from relaxbench.relax.relaxed import relaxed_layers

__all__ = ["DUAL_FORMS", "attach_dual", "dual_penalty", "dual_state", "dual_step"]

DUAL_FORMS = ("exact", "resilient")


def attach_dual(model: nn.Module) -> int:
    """Give every relaxed layer ``gamma = 1`` (parameter), ``lambda = 0`` and ``u = 0`` (buffers); returns how many.

    Call before the optimiser is built. Raises ``ValueError`` for a model without relaxed layers.
    """
    layers = list(relaxed_layers(model))
    if not layers:
        raise ValueError("dual ascent needs relaxed layers; the model has none")
    for layer in layers:
        anchor = layer.free_weight_anchor()
        layer.gamma = nn.Parameter(torch.ones((), dtype=anchor.dtype, device=anchor.device))
        layer.register_buffer("dual_lambda", anchor.new_zeros(()))
        layer.register_buffer("dual_slack", anchor.new_zeros(()))
    return len(layers)


def _dual_layers(model: nn.Module) -> list:
    return [layer for layer in relaxed_layers(model) if layer.gamma is not None]


def dual_penalty(model: nn.Module) -> Tensor:
    """``sum_i lambda_i |gamma_i|``: the multipliers' term of the Lagrangian that depends on the primal variables
    (a scalar; differentiable in the ``gamma_i``, the ``lambda_i`` are constants)."""
    layers = _dual_layers(model)
    if not layers:
        raise ValueError("the model has no dual variables; call attach_dual first")
    return sum(layer.dual_lambda * layer.gamma.abs() for layer in layers)


@torch.no_grad()
def dual_step(model: nn.Module, eta_dual: float, form: str, rho: float) -> None:
    """One dual-ascent update of every layer's ``lambda_i`` (and the resilient slack ``u_i``), module docstring."""
    if form not in DUAL_FORMS:
        raise ValueError(f"dual form must be one of {list(DUAL_FORMS)}, got {form!r}")
    for layer in _dual_layers(model):
        violation = layer.gamma.abs() - layer.dual_slack
        layer.dual_lambda.copy_((layer.dual_lambda + eta_dual * violation).clamp(min=0.0))
        if form == "resilient":
            layer.dual_slack.copy_(layer.dual_lambda / rho)


def dual_state(model: nn.Module) -> dict[str, list[float]]:
    """``{"gamma": [...], "lambda": [...], "slack": [...]}``, one value per relaxed layer in module order."""
    layers = _dual_layers(model)
    return {
        "gamma": [float(layer.gamma.detach()) for layer in layers],
        "lambda": [float(layer.dual_lambda) for layer in layers],
        "slack": [float(layer.dual_slack) for layer in layers],
    }
