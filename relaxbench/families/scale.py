"""Scale-steerable convolutions (SESN, Sosnovik, Szmaja and Smeulders 2020; as in Wang et al.'s scale models).

escnn has no scale group, and no maintained pip library offers scale-equivariant convolutions (the SESN and
DISCO reference code are research repositories, not packages), so this module is ours.

**Basis.** For each scale ``sigma`` of ``scales`` (the largest fills the ``k x k`` kernel) the Hermite-Gaussian
functions ``psi_nm(x, y) = sigma^-2 exp(-(x^2 + y^2) / (2 sigma^2)) He_n(x / sigma) He_m(y / sigma)``,
``n, m < effective_size``, are sampled on the integer grid of side ``int(k sigma / max(scales)) // 2 * 2 + 1``
and zero-padded to ``k x k``; every function is divided by its norm at the smallest scale (the published
``steerable_A`` basis). Since ``psi_sigma(x) = sigma^-2 psi_1(x / sigma)``, a kernel built at scale
``sigma`` is the scale-1 kernel dilated by ``sigma``.

**Layers.** Features carry a scale axis, ``[B, C, S, H, W]`` with ``S = len(scales)``:

- :class:`ScaleConv` ``lift=True`` (Z2 -> H): ``[B, C_in, H, W] -> [B, C_out, S, H, W]``, channel ``(c, i)``
  convolves the input with the kernel at scale ``scales[i]``;
- ``lift=False`` (H -> H): ``[B, C_in, S, H, W] -> [B, C_out, S, H, W]``, each scale with its own kernel, no
  mixing between scales (the published models' ``scale_size = 1``).

Kernels are ``sum_f w[o, i, f] psi_f(sigma)``; with ``per_position=True`` the coefficients may differ at every
kernel position (``w[o, i, f, p]``: the relaxed scale-steerable convolution of Wang et al.), and
:func:`~relaxbench.families.rsteer.position_smoothness` measures how far they are from tied.

**Equivariance (approximate).** Downscaling an input by 2 (``D``, 2x2 average pooling) maps the chain of
channels at scale ``sigma`` onto the chain at ``2 sigma``: ``f_sigma(D x) ~ D f_{2 sigma}(x)`` when both scales
are in ``scales``, up to the grid's discretisation and the zero padding. Nothing on a pixel grid is exactly
scale-equivariant.

**The paper's relaxation** (only on the first layer of the scale model, as published):
:class:`RelaxedScaleLift` adds ``theta * W(x)``, ``W`` a bias-free ``Conv2d(C_in -> C_out S)``. Its Lie-type
penalty uses the generator "downscale by 2": ``sum_pairs ||W(D x)_i - D(W x)_j||^2`` over the scale pairs
``scales[j] = 2 scales[i]``; for an exactly scale-steerable ``W`` this is only the discretisation error above.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from relaxbench.families import RelaxedLayer, make_finite_action
from relaxbench.families.rsteer import position_smoothness

__all__ = ["RelaxedScaleLift", "ScaleConv", "downscale", "hermite_gaussian_basis", "scale_pairs"]


def hermite_gaussian_basis(kernel_size: int, scales: Sequence[float], effective_size: int) -> Tensor:
    """``[F, S, k, k]`` (float64) the Hermite-Gaussian basis of the module docstring, ``F = effective_size^2``."""
    max_scale = max(scales)
    orders = [(n, m) for n in range(effective_size) for m in range(effective_size)]
    per_scale = []
    for sigma in scales:
        side = int(kernel_size * sigma / max_scale) // 2 * 2 + 1
        x = np.arange(side) - side // 2
        gauss = np.exp(-(x**2) / (2 * sigma**2)) / sigma
        axis = [
            gauss * np.polynomial.hermite_e.hermeval(x / sigma, [0] * n + [1]) for n in range(effective_size)
        ]
        pad = (kernel_size - side) // 2
        functions = [np.pad(np.outer(axis[n], axis[m]), pad) for n, m in orders]
        per_scale.append(np.stack(functions))
    basis = torch.as_tensor(np.stack(per_scale, 1))  # [F, S, k, k]
    return basis / basis[:, :1].pow(2).sum((2, 3), keepdim=True).sqrt()


def scale_pairs(scales: Sequence[float]) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)`` with ``scales[j] = 2 scales[i]`` (the downscale-by-2 generator's action)."""
    return [(i, j) for i, a in enumerate(scales) for j, b in enumerate(scales) if abs(b - 2 * a) < 1e-9]


def downscale(x: Tensor) -> Tensor:
    """``D``: 2x2 average pooling of the last two axes (``[..., H, W] -> [..., H // 2, W // 2]``)."""
    lead = x.shape[:-2]
    return F.avg_pool2d(x.reshape(-1, 1, *x.shape[-2:]), 2).reshape(*lead, x.shape[-2] // 2, x.shape[-1] // 2)


class ScaleConv(nn.Module):
    """Scale-steerable convolution (module docstring), zero "same" padding, one bias per output channel.

    Args:
        c_in, c_out: channels (per scale).
        kernel_size: odd ``k``; scales: the scale axis; effective_size: Hermite orders per axis.
        lift: Z2 -> H (input ``[B, C_in, H, W]``) instead of H -> H (input ``[B, C_in, S, H, W]``).
        per_position: coefficients per kernel position (the relaxed form), initialised tied.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        scales: Sequence[float],
        effective_size: int,
        lift: bool,
        per_position: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.c_in, self.c_out, self.kernel_size, self.lift = c_in, c_out, kernel_size, lift
        self.scales = tuple(float(s) for s in scales)
        basis = hermite_gaussian_basis(kernel_size, self.scales, effective_size)
        self.register_buffer("basis", basis.flatten(2).to(torch.get_default_dtype()))  # [F, S, k * k]
        n_funcs = basis.shape[0]
        bound = 1.0 / np.sqrt(c_in * n_funcs)  # PyTorch's default (kaiming_uniform, a = sqrt 5) on [o, i, F]
        tied = torch.empty(c_out, c_in, n_funcs, 1).uniform_(-bound, bound)
        positions = kernel_size**2 if per_position else 1
        self.coefficients = nn.Parameter(tied.expand(-1, -1, -1, positions).clone())
        self.bias = nn.Parameter(torch.zeros(c_out))

    def kernel(self) -> Tensor:
        """``[C_out, C_in, S, k, k]``: the kernels at every scale."""
        k, positions = self.kernel_size, self.basis.shape[-1]
        w = self.coefficients.expand(-1, -1, -1, positions)
        return torch.einsum("oifp,fsp->oisp", w, self.basis).unflatten(-1, (k, k))

    def forward(self, x: Tensor) -> Tensor:
        kernel, n_scales, pad = self.kernel(), len(self.scales), self.kernel_size // 2
        if self.lift:  # [B, C_in, H, W] -> channels (o, s)
            weight = kernel.transpose(1, 2).reshape(self.c_out * n_scales, self.c_in, *kernel.shape[-2:])
            y = F.conv2d(x, weight, padding=pad).unflatten(1, (self.c_out, n_scales))
        else:  # one group per scale
            b, _, _, h, w = x.shape
            stacked = x.transpose(1, 2).reshape(b, n_scales * self.c_in, h, w)
            weight = kernel.permute(2, 0, 1, 3, 4).reshape(
                n_scales * self.c_out, self.c_in, *kernel.shape[-2:]
            )
            y = F.conv2d(stacked, weight, padding=pad, groups=n_scales).unflatten(1, (n_scales, self.c_out))
            y = y.transpose(1, 2)
        return y + self.bias[:, None, None, None]

    def smoothness(self) -> Tensor:
        """Mean absolute difference of the coefficients at neighbouring kernel positions (0 when tied)."""
        return position_smoothness(self.coefficients, self.kernel_size)

    @torch.no_grad()
    def tie_(self) -> ScaleConv:
        """Set every coefficient to its mean over the kernel positions; returns ``self``."""
        self.coefficients.copy_(self.coefficients.mean(-1, keepdim=True).expand_as(self.coefficients))
        return self


class RelaxedScaleLift(RelaxedLayer):
    """``f(x) = lift(x) + theta * W(x)``: ``[B, C_in, H, W] -> [B, C_out, S, H, W]``, ``W`` a bias-free
    ``Conv2d(C_in -> C_out S, k)`` read as ``[B, C_out, S, H, W]``; penalty of the module docstring.

    Args:
        lift: the scale-steerable lifting convolution (:class:`ScaleConv` with ``lift=True``).
        init_std: standard deviation of the free kernel at initialisation.
        penalty_examples: evaluate the penalty on the first ``n`` examples of each batch (``None``: all).
    """

    def __init__(self, lift: ScaleConv, init_std: float = 1e-4, penalty_examples: int | None = None) -> None:
        if not lift.lift:
            raise ValueError("RelaxedScaleLift relaxes a lifting (Z2 -> H) ScaleConv")
        self.pairs = scale_pairs(lift.scales)
        if not self.pairs:
            raise ValueError(
                f"scales {list(lift.scales)} contain no pair (s, 2 s) for the relaxation's penalty"
            )
        n_scales = len(lift.scales)

        def free() -> nn.Conv2d:
            k = lift.kernel_size
            layer = nn.Conv2d(lift.c_in, lift.c_out * n_scales, k, padding=k // 2, bias=False)
            nn.init.normal_(layer.weight, 0.0, init_std)
            return layer

        source, target = zip(*self.pairs)

        def on_output(y: Tensor) -> Tensor:  # D(y)_j moved to channel i, zero where i has no partner
            moved = torch.zeros_like(downscale(y))
            moved[:, :, list(source)] = downscale(y[:, :, list(target)])
            return moved[None]

        super().__init__(lift, free, make_finite_action(lambda x: downscale(x)[None], on_output))
        self.n_scales, self.penalty_examples = n_scales, penalty_examples

    def forward(self, x: Tensor) -> Tensor:
        y = self.equivariant(x)
        if self.theta == 0.0:
            return y
        self._record(x[: self.penalty_examples])
        w_x = self.free(x).unflatten(1, (-1, self.n_scales))
        self._note_outputs(y, w_x)
        return y + self.theta * w_x

    def penalty_terms(self, lie: bool = True, norm: bool = True) -> tuple[Tensor, Tensor]:
        """``(ld, norm)``: ``sum_pairs ||W(D x)_i - D(W x)_j||^2`` and ``||W x||^2``, both averaged over the
        recorded examples (channels without a partner scale are left out of ``ld``)."""
        x = self._last_input
        zero = self.free.weight.new_zeros(())
        if x is None:
            return zero, zero
        wx = self.free(x).unflatten(1, (-1, self.n_scales))
        ld = zero
        if lie:
            source = [i for i, _ in self.pairs]
            moved = self.free(downscale(x)).unflatten(1, (-1, self.n_scales))[:, :, source]
            ld = (moved - self.action.on_output(wx)[0][:, :, source]).pow(2).sum() / x.shape[0]
        sq = wx.pow(2).sum() / x.shape[0] if norm else zero
        return ld, sq
