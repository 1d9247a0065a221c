"""Lie-derivative penalty for a free linear map, and the group actions it needs.

For a linear ``W: V_in -> V_out`` and a Lie-algebra generator ``A`` acting on features through
``dA_in`` and ``dA_out``, the Lie derivative is ``L_A(W) = W dA_in - dA_out W``; it vanishes for every
``A`` exactly when ``W`` is equivariant. Evaluated on a (detached) layer input ``x``:

    ld(x) = sum_A || W(dA_in x) - dA_out(W x) ||^2

For finite groups (C_N, D_N) there is no Lie algebra; the group's generators ``g`` are used with the
finite difference ``W(rho_in(g) x) - rho_out(g) W(x)``.

Layout: a :class:`FeatureAction` returns the actions of all ``G`` generators *stacked on a new leading
axis*, ``[G, *x.shape]``, and the penalty compares ``W`` applied to each slice with the output action of
the same slice. The published code laid the generator outputs out generator-major and split them
component-major, which penalises exactly equivariant maps; keeping the generator
axis separate from the feature axes makes that mistake impossible here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "FeatureAction",
    "apply_matrices",
    "lie_derivative_sq",
    "make_finite_action",
    "make_lie_action",
    "published_layout_generators",
]


@dataclass(frozen=True)
class FeatureAction:
    """How a group acts on a layer's input and output features.

    Attributes:
        on_input: ``x [*batch, *feat_in] -> [G, *batch, *feat_in]``, the action of each of ``G`` generators.
        on_output: ``y [*batch, *feat_out] -> [G, *batch, *feat_out]``, the same generators on the output.
        kind: ``"lie"`` for infinitesimal generators (``dA x``), ``"finite"`` for group elements (``g x``).
    """

    on_input: Callable[[Tensor], Tensor]
    on_output: Callable[[Tensor], Tensor]
    kind: Literal["lie", "finite"]


def apply_matrices(mats: Tensor, x: Tensor, dim: int) -> Tensor:
    """Apply each of ``G`` matrices ``mats [G, d, d]`` to axis ``dim`` of ``x``; returns ``[G, *x.shape]``."""
    x_moved = x.movedim(dim, -1)
    out = torch.einsum("gij,...j->g...i", mats.to(dtype=x.dtype, device=x.device), x_moved)
    return out.movedim(-1, dim if dim < 0 else dim + 1)


def make_lie_action(gen_in: Tensor, gen_out: Tensor, dim_in: int = -1, dim_out: int = -1) -> FeatureAction:
    """Infinitesimal action of Lie-algebra generators given as matrices.

    Args:
        gen_in: ``[G, d_in, d_in]`` generators acting on axis ``dim_in`` of the input features.
        gen_out: ``[G, d_out, d_out]`` the same generators acting on axis ``dim_out`` of the output.
    """
    if gen_in.shape[0] != gen_out.shape[0]:
        raise ValueError(f"input has {gen_in.shape[0]} generators, output {gen_out.shape[0]}")
    return FeatureAction(
        on_input=lambda x: apply_matrices(gen_in, x, dim_in),
        on_output=lambda y: apply_matrices(gen_out, y, dim_out),
        kind="lie",
    )


def make_finite_action(
    act_in: Callable[[Tensor], Tensor], act_out: Callable[[Tensor], Tensor]
) -> FeatureAction:
    """Finite action of a discrete group's generators (e.g. the 2*pi/N rotation of C_N, and a flip for D_N).

    ``act_in`` / ``act_out`` return the stacked transformed features ``[G, *x.shape]``.
    """
    return FeatureAction(on_input=act_in, on_output=act_out, kind="finite")


def lie_derivative_sq(linear: Callable[[Tensor], Tensor], x: Tensor, action: FeatureAction) -> Tensor:
    """``sum_A ||W(dA_in x) - dA_out(W x)||^2`` summed over generators and feature axes, mean over ``x``'s batch.

    Args:
        linear: the bias-free map ``W`` (shape ``[B, *feat_in] -> [B, *feat_out]``); must be linear.
        x: ``[B, *feat_in]`` the layer input (detach it to penalise ``W`` alone).
        action: the group's action on input and output features.

    Returns:
        A scalar tensor (units of the squared features), zero exactly when ``W`` commutes with the action.
    """
    transformed_in = action.on_input(x)  # [G, B, *feat_in]
    n_gen, batch = transformed_in.shape[0], transformed_in.shape[1]
    w_of_ax = linear(transformed_in.reshape(n_gen * batch, *transformed_in.shape[2:]))
    a_of_wx = action.on_output(linear(x))  # [G, B, *feat_out]
    diff = w_of_ax.reshape(a_of_wx.shape) - a_of_wx
    return diff.pow(2).sum() / batch


def published_layout_generators(gen_in: Tensor) -> Tensor:
    """``[G, d, d]``: the maps the published code applied to a layer input in place of the generators ``gen_in``.

    The published VN and SEGNN code concatenated the generators' outputs generator-major,
    ``[A_1 x, ..., A_G x]`` (index ``g d + i``), and split that vector as if it were component-major (index
    ``i G + g``): its "``A_g x``" is ``S_g x`` with ``S_g[i] = M[i G + g]``, ``M = [A_1; ...; A_G]`` (``[G d, d]``).
    A penalty ``sum_g ||W S_g x - A_g W x||^2`` with these ``S_g`` is the published layout (shared/METHOD.md
    section 4.1); it is not zero for equivariant ``W`` and has no proper null space. For ``G = 1`` it is the
    correct Lie derivative.
    """
    g, d, _ = gen_in.shape
    return gen_in.reshape(g * d, d).reshape(d, g, d).transpose(0, 1).contiguous()
