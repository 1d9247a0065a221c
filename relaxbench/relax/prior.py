"""Weight-space priors that belong to an architecture, not to a training method.

Some architectures are defined together with a soft constraint on their own weights: the relaxed steerable
convolution of Wang, Walters and Yu (2022) lets its kernel coefficients vary over the kernel's positions and
pulls neighbouring ones together with ``alpha * mean |w_p - w_q|``. That term is part of the model, so the trainer
adds it to the loss under every method (``equivariant``, ``relaxed``, ``rpp``, ...), on every device.

A module opts in by inheriting :class:`WeightPrior` and implementing :meth:`WeightPrior.prior_penalty`;
:func:`prior_penalty` sums the terms of every such module in a model.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["WeightPrior", "prior_penalty"]


class WeightPrior:
    """Mixin for an ``nn.Module`` whose architecture carries a weighted penalty on its own parameters."""

    def prior_penalty(self) -> Tensor:
        """The weighted penalty (a scalar tensor, differentiable in the module's parameters)."""
        raise NotImplementedError


def prior_penalty(model: nn.Module) -> Tensor | None:
    """Sum of :meth:`WeightPrior.prior_penalty` over the modules of ``model`` (``None`` if there are none)."""
    terms = [m.prior_penalty() for m in model.modules() if isinstance(m, WeightPrior)]
    return sum(terms[1:], terms[0]) if terms else None
