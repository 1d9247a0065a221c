"""The relaxed steerable convolution (RSteer) of Wang, Walters and Yu (ICML 2022) on escnn field types.

An escnn ``R2Conv`` between ``n_in`` fields of one representation ``rho_in`` and ``n_out`` fields of one
representation ``rho_out`` builds its kernel from a steerable basis ``B_b(s)`` (``b < D`` basis elements,
each a ``[dim rho_out, dim rho_in]`` matrix at every kernel position ``s`` of the ``k x k`` grid) with one
coefficient per (output field, input field, basis element)::

    K[o, i](s) = sum_b w[o, i, b] B_b(s)            (equivariant: R2Conv)
    K[o, i](s) = sum_b w[o, i, b, s] B_b(s)         (relaxed: RSteerConv)

The relaxed form lets every coefficient vary over the kernel positions (the published relaxed rotation
steerable CNN); with coefficients equal at all positions ("tied") it *is* the R2Conv, exactly equivariant.
:meth:`RSteerConv.smoothness` is the mean absolute difference of the coefficients at neighbouring kernel
positions; the model weighs it by ``alpha`` (:class:`relaxbench.relax.WeightPrior`), so ``alpha -> infinity``
recovers the equivariant network.

Differences from the published layer, on purpose: the bias is escnn's equivariant bias (one value per
trivial sub-representation of the output; the published layer has one free bias per channel, which breaks
C4 equivariance even with tied coefficients); the coefficients start tied at escnn's He initialisation
(the published ones start independent and uniform), so an RSteer network starts as its equivariant twin of
the same seed; neighbours are the grid's horizontal and vertical ones (the published penalty compares
positions ``s`` and ``s + 1`` of the row-major flattened kernel, which pairs the end of a row with the start
of the next).

``RSteerConv`` is an ``R2Conv`` (it overrides only :meth:`~RSteerConv.expand_parameters`), so escnn's
eval-mode filter cache, ``export()`` and relaxbench's :class:`~relaxbench.families.fields.RelaxedR2Conv` (the
paper's free ``Conv2d`` beside the layer) work on it unchanged.
"""

from __future__ import annotations

import torch
from escnn import nn as enn
from torch import Tensor, nn

__all__ = ["RSteerConv", "position_smoothness", "steerable_basis"]


def position_smoothness(coefficients: Tensor, kernel_size: int) -> Tensor:
    """Mean ``|w[..., s] - w[..., s']|`` over ``coefficients [..., k * k]`` (positions of a ``k x k`` kernel,
    row-major) and all pairs of grid-neighbouring positions ``s, s'`` (horizontal and vertical); zero exactly
    when every coefficient is the same at all positions. A last axis of size 1 (coefficients shared by all
    positions) scores 0."""
    if coefficients.shape[-1] == 1:
        return coefficients.new_zeros(())
    grid = coefficients.unflatten(-1, (kernel_size, kernel_size))
    across = (grid[..., :, 1:] - grid[..., :, :-1]).abs()
    down = (grid[..., 1:, :] - grid[..., :-1, :]).abs()
    return (across.sum() + down.sum()) / (across.numel() + down.numel())


def steerable_basis(in_type: enn.FieldType, out_type: enn.FieldType, kernel_size: int) -> Tensor:
    """escnn's kernel basis between one field of ``in_type`` and one of ``out_type``: ``[D, o, i, k * k]``.

    Both types must consist of copies of a single representation. Basis element ``b`` is the kernel escnn's
    ``R2Conv`` (default basis parameters) builds from the ``b``-th unit coefficient vector, positions flattened
    row-major.
    """
    reps_in, reps_out = set(in_type.representations), set(out_type.representations)
    if len(reps_in) != 1 or len(reps_out) != 1:
        raise ValueError("a relaxed steerable convolution needs one field representation in and one out")
    gs = in_type.gspace
    single = enn.R2Conv(
        enn.FieldType(gs, list(reps_in)),
        enn.FieldType(gs, list(reps_out)),
        kernel_size,
        initialize=False,
        recompute=True,
    )
    expansion = single.basisexpansion
    unit = torch.eye(expansion.dimension())
    return torch.stack([expansion(e) for e in unit])


class RSteerConv(enn.R2Conv):
    """Relaxed steerable convolution ``in_type -> out_type`` (escnn field types, ``[B, C_in, H, W] -> [B, C_out,
    H', W']`` GeometricTensors), with zero ``padding``.

    Parameters: ``coefficients [n_out, n_in, D, k * k]`` (one set of basis coefficients per kernel position)
    and escnn's equivariant ``bias``. Buffer ``basis [D, o, i, k * k]`` (:func:`steerable_basis`).
    """

    def __init__(
        self,
        in_type: enn.FieldType,
        out_type: enn.FieldType,
        kernel_size: int,
        padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__(in_type, out_type, kernel_size, padding=padding, bias=bias, recompute=True)
        basis = steerable_basis(in_type, out_type, kernel_size)
        n_out, n_in, dim = len(out_type), len(in_type), basis.shape[0]
        if self.weights.numel() != n_out * n_in * dim:
            raise AssertionError("escnn's weight layout is not [n_out, n_in, D]")
        self.register_buffer("basis", basis)
        tied = self.weights.detach().view(n_out, n_in, dim, 1).expand(-1, -1, -1, kernel_size**2)
        del self.weights
        self.coefficients = nn.Parameter(tied.clone())

    def expand_parameters(self) -> tuple[Tensor, Tensor | None]:
        """``(filter [C_out, C_in, k, k], bias [C_out] or None)`` from the position-dependent coefficients."""
        k = self.kernel_size
        kernel = torch.einsum("nmbs,bois->nomis", self.coefficients, self.basis)
        kernel = kernel.reshape(self.out_type.size, self.in_type.size, k, k)
        bias = None if self.bias is None else self.bias_expansion @ self.bias
        return kernel, bias

    def smoothness(self) -> Tensor:
        """:func:`position_smoothness` of the coefficients (zero exactly when they are tied)."""
        return position_smoothness(self.coefficients, self.kernel_size)

    @torch.no_grad()
    def tie_(self) -> RSteerConv:
        """Set every coefficient to its mean over the kernel positions (the nearest equivariant layer in the
        coefficients' L2 norm); returns ``self``."""
        self.coefficients.copy_(self.coefficients.mean(-1, keepdim=True).expand_as(self.coefficients))
        return self
