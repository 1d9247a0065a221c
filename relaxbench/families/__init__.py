"""How a model relaxes: one module per architecture family, each with the same verb.

Every family module exposes ``relax(equivariant_module, relaxed, **options)``: it returns the module itself
when ``relaxed`` is false (the ``equivariant`` method then trains exactly the plain architecture), and
otherwise a :class:`~relaxbench.relax.RelaxedLayer` ``f(x) = f_eq(x) + theta * W(x)`` that takes and returns
what the module takes and returns, with the family's generators for the Lie-derivative penalty. The free
branch ``W`` is built from a random stream derived from (not drawn from) torch's global one, so a relaxed model
at theta = 0 computes bit for bit what its plain twin computes.

==========================================  ========================================================================
family (module)                             ``relax`` takes
==========================================  ========================================================================
:mod:`~relaxbench.families.irreps`          an e3nn map of irreps vectors ``[..., irreps_in.dim]`` (``o3.Linear``;
                                            a map conditioned on attributes; a feed-forward block with a free MLP)
:mod:`~relaxbench.families.fields`          an escnn ``R2Conv`` of field types (C_N, D_N, SO(2))
:mod:`~relaxbench.families.vector_neurons`  a :class:`~relaxbench.families.vector_neurons.VNLinear` of Vector Neuron
                                            features ``[B, C, 3, *pts]``
:mod:`~relaxbench.families.vectors`         a :class:`~relaxbench.families.vectors.VectorMix` of per-particle
                                            stacks of Cartesian vectors ``[..., 3 C]`` (EGNN-style updates)
this module                                 anything else: ``relax(module, relaxed, free=..., action=...)``
==========================================  ========================================================================

:mod:`~relaxbench.families.rsteer` (Wang et al.'s relaxed steerable convolution on escnn fields) and
:mod:`~relaxbench.families.scale` (scale-steerable convolutions, the scale relaxation) hold the smoke-plume
models' layers, :mod:`~relaxbench.families.plume` their shared stacks.
:mod:`~relaxbench.families.so3` derives every so(3) generator the families use; :mod:`~relaxbench.families.blocks`
holds the shared blocks that belong to no family (``fully_connected_edges``, ``invariant_head``, a plain CNN).
Models import from here and from torch / e3nn / escnn only (never from a sibling model). The trainer drives
the relaxed layers with :func:`set_theta` and :func:`~relaxbench.relax.relaxation_penalty`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from relaxbench.relax.lie import FeatureAction, make_finite_action, make_lie_action
from relaxbench.relax.relaxed import RelaxedLayer, relaxed_layers, set_theta

__all__ = [
    "FeatureAction",
    "RelaxedLayer",
    "make_finite_action",
    "make_lie_action",
    "relax",
    "relaxed_layers",
    "set_theta",
]


def relax(
    module: nn.Module,
    relaxed: bool,
    *,
    free: Callable[[], nn.Module],
    action: Callable[[], FeatureAction],
) -> nn.Module:
    """``module`` itself for a plain model, else ``f(x) = module(x) + theta * W(x)`` for any family.

    Args:
        module: the equivariant map ``f_eq``, ``[B, *feat_in] -> [B, *feat_out]``.
        relaxed: whether to build the relaxed layer.
        free: zero-argument factory of the free map ``W`` (same input and output shapes as ``module``).
        action: zero-argument factory of the group's action on the input and output features, e.g.
            ``lambda: make_lie_action(gen_in, gen_out)`` for Lie-algebra generators or
            ``lambda: make_finite_action(act_in, act_out)`` for a finite group's generators.

    The factories run only for a relaxed model, so a plain model never builds them.
    """
    if not relaxed:
        return module
    return RelaxedLayer(module, free, action())
