"""Power analysis and verdicts of paired comparisons: numbers against statsmodels, a textbook case and the
noncentral t distribution; verdict logic at its boundaries; the aggregates' columns."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import tt_solve_power

from relaxbench.leaderboard import aggregate, collect
from relaxbench.verdicts import (
    BETTER,
    INCONCLUSIVE,
    NO_DIFFERENCE,
    WORSE,
    minimum_detectable_effect,
    seeds_needed,
    verdict,
)
from tests.report.synthetic import write_standard_runs


def _paired_power(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test from the noncentral t distribution (scipy, not statsmodels)."""
    df, nc = n - 1, effect / sd * math.sqrt(n)
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


@pytest.mark.parametrize("n", [2, 3, 5, 10, 30])
def test_mde_is_the_statsmodels_effect_size_times_the_spread_and_has_power_0_8(n):
    sd = 0.004
    mde = minimum_detectable_effect(sd, n, alpha=0.05, power=0.8)
    reference = tt_solve_power(nobs=n, alpha=0.05, power=0.8, alternative="two-sided") * sd
    assert mde == pytest.approx(reference, rel=1e-12)
    assert _paired_power(mde, sd, n) == pytest.approx(0.8, abs=1e-6)


def test_mde_shrinks_with_seeds_and_is_undefined_below_two_pairs():
    mdes = [minimum_detectable_effect(1.0, n, 0.05) for n in (3, 5, 10, 20)]
    assert mdes == sorted(mdes, reverse=True)
    assert mdes[0] == pytest.approx(3.264, abs=1e-3)  # n = 3 cannot see differences below 3.3 sd
    assert math.isnan(minimum_detectable_effect(1.0, 1, 0.05))
    assert math.isnan(minimum_detectable_effect(math.nan, 5, 0.05))
    assert minimum_detectable_effect(0.0, 3, 0.05) == 0.0


def test_seeds_needed_matches_the_textbook_case_and_the_statsmodels_solution():
    # Cohen's d_z = 0.5, alpha 0.05 two-sided, power 0.8: 34 pairs (G*Power and statsmodels: 33.4)
    assert seeds_needed(sd=2.0, effect=1.0, alpha=0.05, power=0.8) == 34
    raw = tt_solve_power(effect_size=0.5, alpha=0.05, power=0.8, alternative="two-sided")
    assert seeds_needed(2.0, 1.0, 0.05) == math.ceil(raw)
    n = int(seeds_needed(1.0, 0.3, 0.05))
    assert _paired_power(0.3, 1.0, n) >= 0.8 > _paired_power(0.3, 1.0, n - 1)
    assert seeds_needed(1.0, -0.3, 0.05) == n  # the sign of the effect does not matter


def test_seeds_needed_edge_cases():
    assert seeds_needed(1.0, 50.0, 0.05) == 2  # a huge effect: the smallest paired test suffices
    assert seeds_needed(0.0, 0.01, 0.05) == 2
    assert seeds_needed(1.0, 0.0, 0.05) == math.inf
    assert seeds_needed(1.0, 1e-4, 0.05) == math.inf  # beyond any sensible number of seeds
    assert math.isnan(seeds_needed(math.nan, 0.1, 0.05))


def _v(mean=-0.01, sd=0.01, n=5, p=0.2, mde=0.01, effect=0.02, lower=True, alpha=0.05):
    return verdict(mean, sd, n, p, mde, effect, lower, alpha)


def test_verdict_significance_boundary_and_direction():
    assert _v(p=0.0499) == BETTER  # lower is better and the method is lower
    assert _v(p=0.0499, mean=0.01) == WORSE
    assert _v(p=0.0499, lower=False) == WORSE  # accuracy went down
    assert _v(p=0.0499, mean=0.01, lower=False) == BETTER
    assert _v(p=0.05) == NO_DIFFERENCE  # p = alpha is not significant; powered (mde 0.01 <= 0.02)


def test_verdict_power_boundary():
    assert _v(mde=0.02, effect=0.02) == NO_DIFFERENCE  # MDE exactly the stated effect: powered
    assert _v(mde=np.nextafter(0.02, 1), effect=0.02) == INCONCLUSIVE
    assert _v(mde=0.02, effect=-0.02) == NO_DIFFERENCE  # the effect's magnitude counts


def test_verdict_degenerate_comparisons():
    assert _v(n=1, p=math.nan, sd=math.nan, mde=math.nan) == INCONCLUSIVE
    assert _v(n=0, mean=math.nan, p=math.nan, sd=math.nan, mde=math.nan) == INCONCLUSIVE
    # every seed moved by the same amount: t is undefined, the shift is not
    assert _v(mean=-0.01, sd=0.0, p=math.nan, mde=0.0) == BETTER
    assert _v(mean=0.01, sd=0.0, p=math.nan, mde=0.0) == WORSE
    assert _v(mean=0.0, sd=0.0, p=math.nan, mde=0.0) == NO_DIFFERENCE  # bit-for-bit identical runs


def test_aggregate_carries_power_and_verdict_columns(tmp_path):
    results_dir = tmp_path / "results" / "synthetic"
    grid = write_standard_runs(results_dir)
    agg = aggregate(collect(results_dir, grid), effect=0.05).set_index(["task", "model", "method"])
    prefix = "test_metric_vs_equivariant"
    baseline = agg.loc[("tetris", "tfn", "equivariant")]
    assert all(baseline[f"{prefix}_{c}"] is None or math.isnan(baseline[f"{prefix}_{c}"]) for c in ("mde",))
    assert baseline[f"{prefix}_verdict"] is None

    # tetris/tfn/relaxed: d = [-0.10, -0.01] (seed 2 diverged), baseline mean 0.25 -> stated effect 0.0125
    relaxed = agg.loc[("tetris", "tfn", "relaxed")]
    sd = float(np.std([-0.10, -0.01], ddof=1))
    assert relaxed[f"{prefix}_sd"] == pytest.approx(sd, rel=1e-12)
    assert relaxed[f"{prefix}_mde"] == pytest.approx(minimum_detectable_effect(sd, 2, 0.05), rel=1e-12)
    assert relaxed[f"{prefix}_effect"] == pytest.approx(0.05 * 0.25, rel=1e-12)
    assert relaxed[f"{prefix}_seeds_needed"] == seeds_needed(sd, 0.0125, 0.05)
    assert not relaxed[f"{prefix}_powered"]
    assert relaxed[f"{prefix}_verdict"] == INCONCLUSIVE

    # toy_acc (higher is better): d = [0.10, 0.09, 0.08], p ~ 0.004: better
    toy = agg.loc[("toy_acc", "tfn", "relaxed")]
    assert toy[f"{prefix}_p_ttest"] < 0.05 and toy[f"{prefix}_verdict"] == BETTER
    # vn: relaxed 0.45, 0.47 against 0.52, 0.51 (seed 0 failed): lower error, d = [-0.07, -0.04]
    assert agg.loc[("tetris", "vn", "relaxed"), f"{prefix}_verdict"] in (BETTER, INCONCLUSIVE)
    # a larger stated effect makes the same data powered: no difference above MDE unless significant
    loose = aggregate(collect(results_dir, grid), effect=10.0).set_index(["task", "model", "method"])
    assert loose.loc[("tetris", "tfn", "relaxed"), f"{prefix}_verdict"] == NO_DIFFERENCE
