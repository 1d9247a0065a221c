"""``rsteer``: the relaxed steerable CNN forecaster of smoke plumes (RSteer, Wang, Walters and Yu 2022).

The ``equiv`` network (C4 or scale, by the spec's symmetry) with coefficients of the steerable basis that may
differ at each kernel position: :class:`~relaxbench.families.rsteer.RSteerConv` for C4, per-position
:class:`~relaxbench.families.scale.ScaleConv` for scale. The architecture's own prior, ``alpha * sum_layers
smoothness`` (mean absolute difference of coefficients at neighbouring kernel positions), is added to the
training loss under every method (:class:`relaxbench.relax.WeightPrior`). With tied coefficients
(:meth:`RSteerNet.tie_`, or at initialisation) the network is exactly the ``equiv`` network; ``alpha ->
infinity`` forces that.

``relaxed=True`` adds the paper's free ``Conv2d`` beside every C4 layer, or beside the first layer of the scale
model: RSteer + the ``relaxed`` method is the paper's "Ours" row of its Table 2. Projection (theta = 0) removes
the free branches; the result is RSteer, approximately equivariant by design.

Parameters (CPU-scale defaults; the paper's in configs/paper.yaml: rotation hidden 92, layers 5, kernel 3,
alpha 1e-5; scale hidden 64, layers 5, kernel 5, alpha 1e-6): ``hidden`` (8), ``layers`` (5), ``kernel_size``
(``null``: 3 rotation, 5 scale), ``alpha`` (``null``: 1e-5 rotation, 1e-6 scale), ``batch_norm`` (False,
rotation only: the published RSteer has none), ``scales`` and ``effective_size`` (scale only, as ``equiv``),
``free_init_std`` (1e-4), ``penalty_examples`` (4).

Published differences (on purpose): the smoothness term enters the loss as ``alpha * sum`` on every device (the
published script squares it through an ``MSELoss`` against 0 and skips it without CUDA); neighbours are grid
neighbours; the C4 layer's bias is equivariant; see :mod:`relaxbench.families.rsteer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from relaxbench.families import plume as _plume
from relaxbench.families.plume import RelaxOptions
from relaxbench.families.rsteer import RSteerConv
from relaxbench.families.scale import ScaleConv
from relaxbench.relax import WeightPrior

__all__ = ["ALPHA", "FAMILY", "TASK_KINDS", "RSteerNet", "build", "build_unconstrained"]

FAMILY = "steerable_cnn"
#: task kinds this model supports -> the group it respects on them
TASK_KINDS = {
    "plume": "C4 with tied coefficients, approximately otherwise (rotation spec); scale, approximately (scale spec)"
}

#: The published smoothness weights.
ALPHA = {"rotation": 1e-5, "scale": 1e-6}


class RSteerNet(nn.Module, WeightPrior):
    """A forecaster ``net`` of relaxed steerable layers with the smoothness prior ``alpha`` (dimensionless).

    Attributes:
        layers, kernel_size: ``net``'s (for a matched plain CNN).
    """

    def __init__(self, net: nn.Module, alpha: float) -> None:
        super().__init__()
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.net, self.alpha = net, alpha
        self.layers, self.kernel_size = net.layers, net.kernel_size

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.net(batch)

    def relaxed_convs(self) -> list[RSteerConv | ScaleConv]:
        """The layers whose coefficients vary over kernel positions."""
        return [m for m in self.modules() if isinstance(m, (RSteerConv, ScaleConv))]

    def prior_penalty(self) -> Tensor:
        """``alpha * sum_layers smoothness``."""
        convs = self.relaxed_convs()
        return self.alpha * sum((conv.smoothness() for conv in convs[1:]), convs[0].smoothness())

    def tie_(self) -> RSteerNet:
        """Tie every layer's coefficients to their mean over kernel positions (the ``equiv`` network)."""
        for conv in self.relaxed_convs():
            conv.tie_()
        return self


def build(
    spec: dict,
    relaxed: bool = False,
    hidden: int = 8,
    layers: int = 5,
    kernel_size: int | None = None,
    alpha: float | None = None,
    batch_norm: bool = False,
    scales: Sequence[float] = _plume.SCALES,
    effective_size: int = 7,
    free_init_std: float = 1e-4,
    penalty_examples: int | None = 4,
) -> RSteerNet:
    """The relaxed steerable CNN for a plume spec (module docstring)."""
    symmetry = _plume.check_spec(spec, "rsteer")
    k = _plume.kernel_size_for(symmetry, kernel_size)
    relax = RelaxOptions(relaxed, free_init_std, penalty_examples)
    if symmetry == "scale":
        net = _plume.scale_net(spec, relax, hidden, layers, k, scales, effective_size, per_position=True)
    else:
        net = _plume.c4_net(spec, RSteerConv, relax, hidden, layers, k, batch_norm)
    return RSteerNet(net, ALPHA[symmetry] if alpha is None else alpha)


def build_unconstrained(spec: dict, **params) -> _plume.PlumeCNN:
    """A plain CNN of the same depth and kernel whose parameter count is closest to this model's."""
    return _plume.matched_cnn(spec, build(spec, **params))
