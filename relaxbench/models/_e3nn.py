"""The e3nn family's relaxation hook: a relaxable ``o3.Linear`` and the so(3) generators of any irreps.

``relaxed_linear(relaxed, irreps_in, irreps_out)`` is what an e3nn model (built-in or a user's) calls for
every linear map that the method may relax. Plain: an ``e3nn.o3.Linear`` (irreps_in -> irreps_out).
Relaxed: a :class:`~relaxbench.relax.dense.DenseRelaxedLinear` whose free branch is a bias-free dense
``Linear(dim_in -> dim_out)`` on the flattened irreps vector (mixing every l and m, as in the published SEGNN
code, initialised N(0, std 1e-4)), penalised with e3nn's so(3) generators, and fused with the equivariant
weight into one matmul while theta > 0.

``relaxed_conditioned(relaxed, module, irreps_in, irreps_out)`` does the same for an equivariant map of two
inputs ``(x, attr)`` that is linear in ``x`` (e.g. a tensor product of node features with steerable node
attributes, SEGNN's "steerable linear" layer): the free branch sees ``x`` alone,
``f(x, attr) = f_eq(x, attr) + theta * W x`` (no fused forward: ``f_eq`` depends on ``attr``).
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor, nn

from relaxbench.relax.dense import DenseRelaxedLinear

__all__ = ["irreps_generators", "linear_matrix", "relaxed_conditioned", "relaxed_linear"]


def irreps_generators(irreps: o3.Irreps, dtype: torch.dtype = torch.float64) -> Tensor:
    """``[3, dim, dim]``: the so(3) generators acting on an irreps vector (block diagonal, e3nn's basis).

    Parity plays no role: the generators of rotations act on ``l`` alone.
    """
    irreps = o3.Irreps(irreps)
    blocks = [[] for _ in range(3)]
    for mul, ir in irreps:
        gens = o3.so3_generators(ir.l).to(dtype)  # [3, 2l+1, 2l+1]
        for a in range(3):
            blocks[a] += [gens[a]] * mul
    return torch.stack([torch.block_diag(*b) for b in blocks])


def linear_matrix(linear: o3.Linear) -> Tensor:
    """The dense ``[dim_in, dim_out]`` matrix of a bias-free ``o3.Linear`` (its action on the identity)."""
    weight = linear.weight
    eye = torch.eye(linear.irreps_in.dim, dtype=weight.dtype, device=weight.device)
    return linear(eye)


def relaxed_linear(relaxed: bool, irreps_in, irreps_out, init_std: float = 1e-4) -> nn.Module:
    """An ``o3.Linear(irreps_in -> irreps_out)``, wrapped with a free dense branch when ``relaxed``.

    Takes and returns irreps vectors ``[..., irreps_in.dim] -> [..., irreps_out.dim]``.
    """
    irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
    linear = o3.Linear(irreps_in, irreps_out)
    if not relaxed:
        return linear
    return DenseRelaxedLinear(
        linear,
        irreps_in.dim,
        irreps_out.dim,
        irreps_generators(irreps_in),
        irreps_generators(irreps_out),
        init_std=init_std,
        equivariant_matrix=lambda: linear_matrix(linear),
    )


def relaxed_conditioned(
    relaxed: bool, module: nn.Module, irreps_in, irreps_out, init_std: float = 1e-4
) -> nn.Module:
    """``module`` (``(x [..., irreps_in.dim], attr) -> [..., irreps_out.dim]``), relaxed with a dense free branch.

    The free branch is a bias-free ``Linear(dim_in -> dim_out)`` on ``x`` initialised ``N(0, init_std^2)``; it
    ignores ``attr``, which :class:`~relaxbench.relax.dense.DenseRelaxedLinear` passes to ``module`` alone.
    """
    if not relaxed:
        return module
    irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
    return DenseRelaxedLinear(
        module,
        irreps_in.dim,
        irreps_out.dim,
        irreps_generators(irreps_in),
        irreps_generators(irreps_out),
        init_std=init_std,
    )
