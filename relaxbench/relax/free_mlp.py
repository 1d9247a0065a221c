"""A relaxed layer whose free branch is a nonlinear MLP of the layer input and extra context.

This is the Equiformer variant of the method (the published Equiformer code): next to an equivariant map
``f_eq: y -> out`` sits a free MLP ``W`` of ``x = [y, c]``, where the context ``c`` may hold anything the
free map should see (in the SE(3)-transformer: the node attribute and the raw centred position), so

    f(y, c) = f_eq(y) + theta * W([y, c]).

The group acts linearly on ``x`` and on the output through Lie-algebra generators ``gen_in [G, d_x, d_x]`` and
``gen_out [G, d_out, d_out]`` (e.g. :func:`relaxbench.families.so3.irreps_generators`). Because ``W`` is
nonlinear, its Lie derivative is taken at the input:

    L_A W (x) = d/dt [W(exp(tA) x) - exp(tA) W(x)] at t = 0 = J_W(x) (dA_in x) - dA_out W(x),

one Jacobian-vector product per generator (``torch.func.jvp``, all generators in one call). It vanishes for
every ``A`` and ``x`` exactly when ``W`` is equivariant; a bias or constant term of ``W`` enters only
through ``dA_out W(x)``, so an invariant bias is allowed and a non-invariant one is penalised, as it should be.
``lie_mode="finite"`` uses the published Equiformer variant instead: the finite difference
``W(g_A x) - g_A W(x)`` for the rotations ``g_A = exp(angle * A)`` (5 degrees about each axis by default),
also zero exactly for an equivariant ``W``.

Where the group also holds an element no generator reaches (O(3)'s inversion ``-I``, acting diagonally by the
signs ``p_in [d_x]`` and ``p_out [d_out]``, each irrep's parity), both modes add its finite difference
``||W(p_in * x) - p_out * W(x)||^2``: a free map that mixes ``0e`` with ``0o`` or ``1o`` with ``1e`` is
penalised, an O(3)-equivariant one is not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from relaxbench.relax.lie import (
    FeatureAction,
    apply_matrices,
    lie_derivative_sq,
    make_finite_action,
    make_lie_action,
)
from relaxbench.relax.relaxed import RelaxedLayer

__all__ = ["RelaxedFreeMLP", "free_mlp"]


def free_mlp(d_in: int, hidden: int, d_out: int, last_scale: float = 0.01) -> nn.Sequential:
    """``Linear(d_in, hidden) -> SiLU -> Linear(hidden, d_out)``, last layer scaled by ``last_scale`` at init."""
    mlp = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, d_out))
    with torch.no_grad():
        mlp[2].weight.mul_(last_scale)
        mlp[2].bias.mul_(last_scale)
    return mlp


def _finite_action(gen_in: Tensor, gen_out: Tensor, angle: float) -> FeatureAction:
    rho_in, rho_out = torch.linalg.matrix_exp(angle * gen_in), torch.linalg.matrix_exp(angle * gen_out)
    return make_finite_action(
        lambda x: apply_matrices(rho_in, x, -1), lambda y: apply_matrices(rho_out, y, -1)
    )


class RelaxedFreeMLP(RelaxedLayer):
    """``f(y, c) = f_eq(y) + theta * W([y, c])`` with a nonlinear free map ``W`` (see module docstring).

    Args:
        equivariant: ``f_eq``, ``[*lead, d_y] -> [*lead, d_out]``.
        d_y, d_context, d_out: sizes of ``y``, of the context ``c`` and of the output.
        gen_in: ``[G, d_y + d_context, d_y + d_context]`` generators acting on ``x = [y, c]``.
        gen_out: ``[G, d_out, d_out]`` the same generators on the output.
        hidden: width of the default free MLP (:func:`free_mlp`, last layer scaled by 0.01 at init).
        lie_mode: ``"lie"`` (default, the exact Lie derivative by ``jvp``) or ``"finite"`` (finite rotations).
        finite_angle: rotation angle of the finite variant, radians (default 5 degrees).
        free: optional factory of another free map ``[*lead, d_y + d_context] -> [*lead, d_out]``.
        parity: optional ``(p_in [d_y + d_context], p_out [d_out])``, the inversion's signs on ``x`` and on the
            output (module docstring); ``None``: the generators alone.

    The penalties are summed over generators, the middle axes and features, and averaged over the leading
    (example) axis, like every relaxed layer's.
    """

    def __init__(
        self,
        equivariant: nn.Module,
        d_y: int,
        d_context: int,
        d_out: int,
        gen_in: Tensor,
        gen_out: Tensor,
        hidden: int = 32,
        lie_mode: Literal["lie", "finite"] = "lie",
        finite_angle: float = math.radians(5.0),
        free: Callable[[], nn.Module] | None = None,
        parity: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        d_x = d_y + d_context
        if gen_in.shape[-1] != d_x or gen_out.shape[-1] != d_out:
            raise ValueError(
                f"generators act on {gen_in.shape[-1]} and {gen_out.shape[-1]} features; "
                f"the layer has input {d_x} (= {d_y} + {d_context}) and output {d_out}"
            )
        if lie_mode == "lie":
            action = make_lie_action(gen_in, gen_out)
        elif lie_mode == "finite":
            action = _finite_action(gen_in, gen_out, finite_angle)
        else:
            raise ValueError(f"lie_mode must be 'lie' or 'finite', got {lie_mode!r}")
        super().__init__(equivariant, free or (lambda: free_mlp(d_x, hidden, d_out)), action)
        self.d_y = d_y
        self.parity_in: Tensor | None
        self.parity_out: Tensor | None
        if parity is None:
            self.parity_in = self.parity_out = None
        else:
            p_in, p_out = (torch.as_tensor(p, dtype=torch.get_default_dtype()) for p in parity)
            if p_in.shape != (d_x,) or p_out.shape != (d_out,):
                raise ValueError(
                    f"parity signs have shapes {tuple(p_in.shape)} and {tuple(p_out.shape)}; the layer has input "
                    f"{d_x} and output {d_out}"
                )
            self.register_buffer("parity_in", p_in, persistent=False)
            self.register_buffer("parity_out", p_out, persistent=False)

    def forward(self, y: Tensor, context: Tensor) -> Tensor:  # type: ignore[override]
        out = self.equivariant(y)
        if self.theta == 0.0:
            return out
        x = torch.cat([y, context], dim=-1)
        self._record(x)
        w_x = self.free(x)
        self._note_outputs(out, w_x)
        return out + self.mix * w_x

    def penalty_terms(self, lie: bool = True, norm: bool = True) -> tuple[Tensor, Tensor]:
        """``(ld, norm)`` on the last input ``x [B, ..., d_x]``: squared Lie derivative and ``||W(x)||^2``."""
        x = self._last_input
        zero = self.free_weight_anchor().new_zeros(())
        if x is None:
            return zero, zero
        batch = x.shape[0]
        if not lie:
            return zero, (self.free(x).pow(2).sum() / batch if norm else zero)
        if self.action.kind == "finite":
            w_x = self.free(x)
            ld = lie_derivative_sq(self.free, x, self.action)
        else:
            tangents = self.action.on_input(x)  # [G, B, ..., d_x]
            w_xs, jvp = torch.func.jvp(self.free, (x.expand_as(tangents).contiguous(),), (tangents,))
            w_x = w_xs[0]
            ld = (jvp - self.action.on_output(w_x)).pow(2).sum() / batch
        if self.parity_in is not None:
            p_in, p_out = self.parity_in.to(x.dtype), self.parity_out.to(x.dtype)
            ld = ld + (self.free(x * p_in) - p_out * w_x).pow(2).sum() / batch
        return ld, (w_x.pow(2).sum() / batch if norm else zero)
