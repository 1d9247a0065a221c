"""The Cartesian-vector family: relaxable linear maps on per-particle stacks of 3D vectors (EGNN-style models).

A particle carries ``C`` Cartesian vectors ``u_1 .. u_C`` (e.g. its centred position, its velocity, an
aggregated message), flattened channel-major to ``[..., 3C]`` -- the e3nn irreps ``"Cx1o"``. The SO(3)-equivariant
linear maps ``R^{3C} -> R^3`` are exactly the channel sums ``sum_c a_c u_c`` (dense matrix ``kron(a, I_3)``,
``[3C, 3]``), because the only matrices commuting with every rotation of ``R^3`` are multiples of ``I_3``.

:class:`VectorMix` is such a map with some coefficients fixed and some learned. ``relax(mix, relaxed)`` wraps
it, for a relaxed model, in a :class:`~relaxbench.relax.dense.DenseRelaxedLinear` whose free branch is a dense
bias-free ``Linear(3C -> 3)`` (any linear map of the vectors, breaking rotations only: translations and particle
permutations stay exact as long as the inputs are translation invariant and the map is shared by all particles),
with the so(3) generators acting on each vector (:func:`relaxbench.families.so3.irreps_generators` of
``"Cx1o"``) for the Lie-derivative penalty, and the fused forward
``u @ (kron(a, I_3) + theta W^T)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from relaxbench.families.so3 import irreps_generators
from relaxbench.relax.dense import DenseRelaxedLinear

__all__ = ["VectorMix", "relax"]


class VectorMix(nn.Module):
    """``sum_c a_c u_c``: ``[..., 3C]`` (irreps ``Cx1o``) -> ``[..., 3]`` (irreps ``1x1o``).

    Args:
        coefficients: the ``C`` coefficients ``a_c`` (initial values of the learned ones).
        learned: which coefficients are trainable parameters; the others are fixed.
    """

    def __init__(self, coefficients: Sequence[float], learned: Sequence[bool]) -> None:
        super().__init__()
        if len(coefficients) != len(learned):
            raise ValueError(f"{len(coefficients)} coefficients but {len(learned)} learned flags")
        coeffs = torch.tensor([float(c) for c in coefficients])
        mask = torch.tensor([bool(f) for f in learned])
        self.n_channels = len(coefficients)
        self.register_buffer("fixed", torch.where(mask, torch.zeros_like(coeffs), coeffs))
        self.register_buffer("learned_index", mask.nonzero().flatten())
        self.weight = nn.Parameter(coeffs[mask].clone()) if mask.any() else None

    def coefficients(self) -> Tensor:
        """``a [C]``."""
        return self.fixed if self.weight is None else self.fixed.index_add(0, self.learned_index, self.weight)

    def matrix(self) -> Tensor:
        """The dense ``[3C, 3]`` matrix ``kron(a, I_3)`` of the map (acting on row vectors)."""
        eye = torch.eye(3, dtype=self.fixed.dtype, device=self.fixed.device)
        return torch.kron(self.coefficients()[:, None], eye)

    def forward(self, u: Tensor) -> Tensor:
        return u @ self.matrix()

    def extra_repr(self) -> str:
        return f"channels={self.n_channels}, learned={self.learned_index.tolist()}"


def relax(mix: VectorMix, relaxed: bool, init_std: float = 1e-4) -> nn.Module:
    """``mix`` itself for a plain model; for a relaxed one ``mix(u) + theta * W u`` with a dense free ``W``.

    Takes ``[..., 3C]`` and returns ``[..., 3]``; the free ``W [3, 3C]`` starts ``N(0, init_std^2)``.
    """
    if not relaxed:
        return mix
    c = mix.n_channels
    return DenseRelaxedLinear(
        mix,
        3 * c,
        3,
        irreps_generators(f"{c}x1o"),
        irreps_generators("1x1o"),
        init_std=init_std,
        equivariant_matrix=mix.matrix,
    )
