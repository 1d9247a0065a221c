"""The e3nn family: relaxable maps of irreps vectors, and the blocks e3nn models share.

``relax(module, relaxed, **options)`` is what an e3nn model (built-in or a user's) calls for every map the
method may relax; ``module`` takes and returns irreps vectors ``[..., irreps_in.dim] -> [..., irreps_out.dim]``
(read from ``module.irreps_in`` / ``module.irreps_out``, or given). Plain: ``module`` itself. Relaxed, by
``free``:

- ``"linear"`` (default): a :class:`~relaxbench.relax.dense.DenseRelaxedLinear` whose free branch is a
  bias-free dense ``Linear(dim_in -> dim_out)`` on the flattened irreps vector (mixing every l and m, as in
  the published SEGNN code, initialised ``N(0, init_std^2)``), penalised with the so(3) generators of the irreps
  and O(3)'s inversion (:func:`penalty_generators`, below). For a bias-free ``o3.Linear`` the two branches are fused
  into one matmul while theta > 0. ``module`` may take extra inputs after ``x`` (e.g. SEGNN's steerable linear
  layer, a tensor product of ``x`` with node attributes, linear in ``x``): ``f(x, attr) = f_eq(x, attr) + theta
  * W x``, the free branch sees ``x`` alone.
- ``"mlp"``: the Equiformer variant, :class:`~relaxbench.relax.free_mlp.RelaxedFreeMLP`: ``f(y, c) = f_eq(y) +
  theta * W([y, c])`` with a free MLP of ``y`` and a context ``c`` of irreps ``context`` (called as ``f(y, c)``;
  give the plain ``module`` a ``forward(y, context=None)`` so that both are called alike), penalised by its Lie
  derivative at the input.

**The whole group O(3).** e3nn's maps are O(3)-equivariant: besides rotations they commute with the inversion
``-I``, which acts on an irrep of parity ``p`` as ``p`` (``+1`` on ``0e``, ``1e``; ``-1`` on ``0o``, ``1o``). The
rotation generators cannot see it, so a free map mixing ``0e`` with ``0o`` or ``1o`` with ``1e`` would cost
nothing; the dense free map's penalty therefore adds the inversion as a finite generator,
``||W P_in x - P_out W x||^2`` (``P = diag(p)``), wherever it can be non-zero (not when all input and output
irreps share one parity). The free MLP (``"mlp"``) takes its Lie derivative by ``jvp`` for the rotations and
adds the inversion's finite difference ``||W(P x) - P W(x)||^2`` on the same terms (:mod:`relaxbench.relax.free_mlp`).

Shared blocks: :func:`gate` (e3nn's gated nonlinearity), :func:`edge_features` (spherical harmonics and a
smooth radial basis of relative positions), :func:`linear_matrix`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import Gate
from torch import Tensor, nn

from relaxbench.families.so3 import irreps_generators, parity_matrix
from relaxbench.relax.dense import DenseRelaxedLinear
from relaxbench.relax.free_mlp import RelaxedFreeMLP

__all__ = ["edge_features", "gate", "irreps_generators", "linear_matrix", "penalty_generators", "relax"]


def linear_matrix(linear: o3.Linear) -> Tensor:
    """The dense ``[dim_in, dim_out]`` matrix of a bias-free ``o3.Linear`` (its action on the identity)."""
    weight = linear.weight
    eye = torch.eye(linear.irreps_in.dim, dtype=weight.dtype, device=weight.device)
    return linear(eye)


def penalty_generators(irreps_in, irreps_out) -> tuple[Tensor, Tensor, int]:
    """``(gen_in [G, d_in, d_in], gen_out [G, d_out, d_out], n_lie)`` for a dense free map ``irreps_in ->
    irreps_out``: the three so(3) generators (``n_lie = 3``) and, where it can see anything, the inversion."""
    irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
    gin, gout = irreps_generators(irreps_in), irreps_generators(irreps_out)
    if len({ir.p for _, ir in irreps_in} | {ir.p for _, ir in irreps_out}) > 1:
        gin = torch.cat([gin, parity_matrix(irreps_in)[None]])
        gout = torch.cat([gout, parity_matrix(irreps_out)[None]])
    return gin, gout, 3


def _is_bias_free_linear(module: nn.Module) -> bool:
    return isinstance(module, o3.Linear) and module.bias.numel() == 0


def relax(
    module: nn.Module,
    relaxed: bool,
    *,
    irreps_in=None,
    irreps_out=None,
    init_std: float = 1e-4,
    free: Literal["linear", "mlp"] = "linear",
    context=None,
    hidden: int = 32,
    lie_mode: Literal["lie", "finite"] = "lie",
    finite_angle: float = math.radians(5.0),
) -> nn.Module:
    """``module`` for a plain model, else ``module + theta * W`` (see the module docstring).

    Args:
        module: the equivariant map of irreps vectors.
        relaxed: whether to build the relaxed layer.
        irreps_in, irreps_out: the map's irreps (default: ``module.irreps_in`` / ``module.irreps_out``).
        init_std: ``"linear"``: standard deviation of the free weight at initialisation.
        free: ``"linear"`` (a dense free matrix) or ``"mlp"`` (a free MLP of ``[y, context]``).
        context: ``"mlp"``: irreps of the context ``c`` the free MLP also sees.
        hidden: ``"mlp"``: width of the free MLP (its last layer scaled by 0.01 at init).
        lie_mode, finite_angle: ``"mlp"``: the exact Lie derivative (``"lie"``, ``torch.func.jvp``) or the
            published finite rotations by ``finite_angle`` radians (``"finite"``).
    """
    if not relaxed:
        return module
    irreps_in = o3.Irreps(module.irreps_in if irreps_in is None else irreps_in)
    irreps_out = o3.Irreps(module.irreps_out if irreps_out is None else irreps_out)
    if free == "mlp":
        context = o3.Irreps(context if context is not None else "")
        sees_parity = len({ir.p for _, ir in irreps_in + context + irreps_out}) > 1
        return RelaxedFreeMLP(
            module,
            irreps_in.dim,
            context.dim,
            irreps_out.dim,
            irreps_generators(irreps_in + context),
            irreps_generators(irreps_out),
            hidden=hidden,
            lie_mode=lie_mode,
            finite_angle=finite_angle,
            parity=(
                (parity_matrix(irreps_in + context).diagonal(), parity_matrix(irreps_out).diagonal())
                if sees_parity
                else None
            ),
        )
    if free != "linear":
        raise ValueError(f"free must be 'linear' or 'mlp', got {free!r}")
    fused: Callable[[], Tensor] | None = None
    if _is_bias_free_linear(module):
        fused = lambda: linear_matrix(module)  # noqa: E731
    gin, gout, n_lie = penalty_generators(irreps_in, irreps_out)
    return DenseRelaxedLinear(
        module,
        irreps_in.dim,
        irreps_out.dim,
        gin,
        gout,
        init_std=init_std,
        equivariant_matrix=fused,
        n_lie=n_lie,
    )


def gate(irreps_out, even: Callable[[Tensor], Tensor] = nn.functional.silu) -> Gate:
    """e3nn's gated nonlinearity with output ``irreps_out``: ``even`` on ``0e`` scalars, tanh on ``0o`` (odd, so
    parity is kept), and every ``l > 0`` irrep multiplied by the sigmoid of its own ``0e`` gate.

    Takes ``[..., gate.irreps_in.dim]`` (scalars, gates, gated) and returns ``[..., gate.irreps_out.dim]``.
    """
    irreps_out = o3.Irreps(irreps_out)
    scalars = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l == 0])
    gated = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l > 0])
    acts = [even if ir.p == 1 else torch.tanh for _, ir in scalars]
    return Gate(scalars, acts, f"{gated.num_irreps}x0e", [torch.sigmoid], gated)


def edge_features(
    rel: Tensor, irreps_sh: o3.Irreps, max_radius: float, n_radial: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(sh, dist, radial)`` of relative positions ``rel [..., 3]`` (length unit of the positions).

    ``sh [..., irreps_sh.dim]``: spherical harmonics of ``rel / |rel|`` (component normalisation, each component
    O(1)); ``dist [...]``: ``|rel|``; ``radial [..., n_radial]``: a smooth finite radial basis of ``dist`` on
    ``[0, max_radius]`` (vanishing at ``max_radius``), scaled by ``sqrt(n_radial)``.
    """
    dist = rel.norm(dim=-1)  # before sh: autograd then sums position gradients (forces) in the same order
    sh = o3.spherical_harmonics(irreps_sh, rel, normalize=True, normalization="component")
    radial = (
        soft_one_hot_linspace(dist, 0.0, max_radius, n_radial, basis="smooth_finite", cutoff=True)
        * n_radial**0.5
    )
    return sh, dist, radial
