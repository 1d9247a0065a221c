"""``rsteer``: the relaxed steerable CNN forecaster of smoke plumes (RSteer, Wang, Walters and Yu 2022).

The ``equiv`` network with every ``R2Conv`` replaced by a :class:`~relaxbench.models._rsteer.RSteerConv`, whose
steerable-basis coefficients may differ at each kernel position. The architecture's own prior,
``alpha * sum_layers smoothness`` (mean absolute difference of coefficients at neighbouring kernel positions),
is added to the training loss under every method (:class:`relaxbench.relax.WeightPrior`). With tied
coefficients (:meth:`RSteerNet.tie_`, or at initialisation) the network is exactly the C4-equivariant ``equiv``
network; ``alpha -> infinity`` forces that.

``relaxed=True`` puts the paper's free ``Conv2d`` beside every RSteer layer
(:class:`~relaxbench.families.fields.RelaxedR2Conv`): RSteer + the ``relaxed`` method is the paper's "Ours" row
of its Table 2. Projection (theta = 0) removes the free branches; the result is RSteer, approximately
equivariant by design.

Parameters (CPU-scale defaults; the paper's sizes in configs/paper.yaml: hidden 92, layers 5, kernel 3,
alpha 1e-5): ``hidden`` regular fields (8), ``layers`` (5), ``kernel_size`` (3), ``alpha`` (1e-5),
``batch_norm`` (False, as published: the published RSteer has none), ``free_init_std`` (1e-4),
``penalty_examples`` (4).

Published differences (on purpose): the smoothness term enters the loss as ``alpha * sum`` on every device (the
published script squares it through an ``MSELoss`` against 0 and skips it without CUDA); the layer's bias is
equivariant; see :mod:`relaxbench.models._rsteer`.
"""

from __future__ import annotations

from torch import Tensor

from relaxbench.models import _plume
from relaxbench.models._plume import RelaxOptions, SteerableNet
from relaxbench.models._rsteer import RSteerConv
from relaxbench.relax import WeightPrior

__all__ = ["FAMILY", "RSteerNet", "build", "build_unconstrained"]

FAMILY = "steerable_cnn"


class RSteerNet(SteerableNet, WeightPrior):
    """A :class:`~relaxbench.models._plume.SteerableNet` of RSteer layers with the smoothness prior ``alpha``."""

    def __init__(self, net: SteerableNet, alpha: float) -> None:
        super().__init__(net.in_type, net.body, net.layers, net.kernel_size)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def rsteer_layers(self) -> list[RSteerConv]:
        return [m for m in self.modules() if isinstance(m, RSteerConv)]

    def prior_penalty(self) -> Tensor:
        """``alpha * sum_layers smoothness`` (:meth:`RSteerConv.smoothness`)."""
        layers = self.rsteer_layers()
        return self.alpha * sum((layer.smoothness() for layer in layers[1:]), layers[0].smoothness())

    def tie_(self) -> RSteerNet:
        """Tie every layer's coefficients to their mean over kernel positions (an exactly equivariant net)."""
        for layer in self.rsteer_layers():
            layer.tie_()
        return self


def build(
    spec: dict,
    relaxed: bool = False,
    hidden: int = 8,
    layers: int = 5,
    kernel_size: int = 3,
    alpha: float = 1e-5,
    batch_norm: bool = False,
    free_init_std: float = 1e-4,
    penalty_examples: int | None = 4,
) -> RSteerNet:
    """The relaxed steerable CNN for a plume spec (module docstring)."""
    if _plume.check_spec(spec, "rsteer") != "rotation":
        raise ValueError(
            "model 'rsteer': the scale form is not built yet; choices for symmetry: ['rotation']"
        )
    relax = RelaxOptions(relaxed, free_init_std, penalty_examples)
    net = _plume.c4_net(spec, RSteerConv, relax, hidden, layers, kernel_size, batch_norm)
    return RSteerNet(net, alpha)


def build_unconstrained(spec: dict, **params) -> _plume.PlumeCNN:
    """A plain CNN of the same depth and kernel whose parameter count is closest to this model's."""
    return _plume.matched_cnn(spec, build(spec, **params))
