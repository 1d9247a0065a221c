"""Statistical power of a paired comparison and the verdict a reader can act on.

A comparison of a method with the ``equivariant`` baseline is paired by seed: ``d_i = method_i - baseline_i``
over ``n`` seeds, tested with the two-sided paired t-test (a one-sample t-test of ``d``). Its power analysis
uses statsmodels' :class:`~statsmodels.stats.power.TTestPower` (the one-sample / paired t-test), with the
standardised effect ``effect / sd(d)``:

* **minimum detectable effect** (MDE, in the metric's unit): the smallest true mean difference the test
  detects with probability ``power`` (0.8) at level ``alpha`` (0.05) with the observed ``n`` and ``sd(d)``:
  ``MDE = d_min(n) * sd(d)``, ``d_min`` solved by ``TTestPower.solve_power``;
* **seeds needed**: the smallest ``n`` whose power to detect the *stated effect* (the config's
  ``statistics.effect``, a fraction of the baseline's mean metric, 5 % by default) reaches ``power``, with
  the observed ``sd(d)`` as the planning value.

The verdict (:func:`verdict`) replaces a bare "tie":

* ``better`` / ``worse``: the paired t-test rejects equality (``p < alpha``; or every seed moved by the same
  non-zero amount, where the t statistic is undefined) in the metric's direction;
* ``no difference above MDE``: not significant, and the test had the power to see the stated effect
  (``MDE <= effect``): the data rule out a difference of that size;
* ``inconclusive``: not significant and underpowered (``MDE > effect``), or too few pairs (n < 2) for a
  test at all: "n = 3 cannot see differences below MDE".
"""

from __future__ import annotations

import math
import warnings

from statsmodels.stats.power import TTestPower

__all__ = [
    "BETTER",
    "EFFECT",
    "INCONCLUSIVE",
    "NO_DIFFERENCE",
    "POWER",
    "VERDICTS",
    "WORSE",
    "minimum_detectable_effect",
    "seeds_needed",
    "verdict",
]

#: The effect a comparison should be able to detect, as a fraction of the baseline's mean metric.
EFFECT = 0.05
#: The power every comparison is planned for.
POWER = 0.8
BETTER, WORSE, NO_DIFFERENCE, INCONCLUSIVE = "better", "worse", "no difference above MDE", "inconclusive"
VERDICTS = (BETTER, WORSE, NO_DIFFERENCE, INCONCLUSIVE)
#: A paired t-test needs two pairs; seeds_needed never answers fewer.
MIN_PAIRS = 2
#: Planning beyond this many seeds is reported as infinity (the stated effect is out of reach).
MAX_SEEDS = 100_000


def _standardised_mde(n: int, alpha: float, power: float) -> float:
    """The smallest standardised effect ``mean(d) / sd(d)`` a two-sided paired t-test of ``n`` pairs detects
    with probability ``power`` at level ``alpha`` (statsmodels' ``TTestPower.solve_power``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notices; the root finder brackets this one reliably
        return float(TTestPower().solve_power(nobs=n, alpha=alpha, power=power, alternative="two-sided"))


def minimum_detectable_effect(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """The smallest true mean paired difference (in the metric's unit, >= 0) a two-sided paired t-test of
    ``n`` pairs detects with probability ``power`` at level ``alpha``, given the differences' sample standard
    deviation ``sd``. NaN below two pairs or when ``sd`` is NaN; 0 when ``sd`` is 0."""
    if n < MIN_PAIRS or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    return _standardised_mde(n, alpha, power) * sd


def seeds_needed(sd: float, effect: float, alpha: float, power: float = POWER) -> float:
    """The number of seeds (pairs) a two-sided paired t-test needs to detect a true mean difference ``effect``
    (same unit as ``sd``) with probability ``power`` at level ``alpha``: the smallest integer ``n >= 2``
    whose minimum detectable effect is at most ``|effect|``. ``inf`` when ``effect`` is 0 (and ``sd`` is not)
    or out of reach below :data:`MAX_SEEDS`; NaN when ``sd`` or ``effect`` is NaN.

    Solved through the minimum detectable effect rather than the power (``power >= target`` exactly when
    the effect reaches the MDE): statsmodels' noncentral t returns NaN power for very large standardised
    effects, while its MDE is well behaved at every ``n``.
    """
    if not (math.isfinite(sd) and math.isfinite(effect)):
        return math.nan
    if sd == 0:
        return float(MIN_PAIRS)
    standardised = abs(effect) / sd

    def enough(n: int) -> bool:
        return _standardised_mde(n, alpha, power) <= standardised

    if enough(MIN_PAIRS):
        return float(MIN_PAIRS)
    if not enough(MAX_SEEDS):
        return math.inf
    low, high = MIN_PAIRS, MAX_SEEDS  # not enough(low), enough(high)
    while high - low > 1:  # bisection: the MDE falls monotonically with n
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return float(high)


def verdict(
    mean: float, sd: float, n: int, p: float, mde: float, effect: float, lower_is_better: bool, alpha: float
) -> str:
    """The verdict of a paired comparison ``method - baseline`` (see the module docstring).

    Args:
        mean, sd, n: the paired differences' mean, sample standard deviation and count.
        p: the two-sided paired t-test p-value (NaN where undefined).
        mde: :func:`minimum_detectable_effect` of the comparison.
        effect: the stated effect (absolute, the metric's unit) the comparison should be able to see.
        lower_is_better: the metric's direction (``True`` for errors and losses, ``False`` for accuracy).
        alpha: the test's level.
    """
    if n < MIN_PAIRS or math.isnan(mean):
        return INCONCLUSIVE
    constant_shift = sd == 0 and mean != 0
    if p < alpha or constant_shift:
        return BETTER if (mean < 0) == lower_is_better else WORSE
    if mde <= abs(effect):
        return NO_DIFFERENCE
    return INCONCLUSIVE
