"""Leaderboard: collection of run records, and its statistics against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from relaxbench.config import METRIC_VERSION, RunSpec
from relaxbench.leaderboard import (
    LeaderboardError,
    aggregate,
    collect,
    paired_difference,
    read_tables,
    summarize,
    welch_p,
    write_tables,
)
from tests.report.synthetic import CONFIG_NAME, write_run, write_standard_runs

# Student's t quantile t_{0.975, 2} in closed form: F(q) = 1/2 + q / (2 sqrt(2 + q^2)) = 0.975.
T975_DF2 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))


def test_summarize_matches_hand_computed_mean_std_and_ci():
    s = summarize([0.30, 0.20, 0.25])
    assert s["n"] == 3
    assert s["mean"] == pytest.approx(0.25, abs=1e-15)
    assert s["std"] == pytest.approx(0.05, rel=1e-12)
    half = T975_DF2 * 0.05 / math.sqrt(3)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((0.25 - half, 0.25 + half), rel=1e-10)


def test_summarize_degenerate_samples():
    one = summarize([0.4, float("nan")])  # NaN (a run without the value) is ignored
    assert one["n"] == 1 and one["mean"] == 0.4
    assert math.isnan(one["std"]) and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    const = summarize([2.0, 2.0, 2.0])
    assert const["std"] == 0.0 and (const["ci_low"], const["ci_high"]) == (2.0, 2.0)
    assert summarize([])["n"] == 0 and math.isnan(summarize([])["mean"])


def test_paired_difference_matches_hand_computed_values():
    x, base = [0.20, 0.10, 0.21], [0.30, 0.20, 0.25]  # d = [-0.1, -0.1, -0.04]
    p = paired_difference(x, base)
    assert p["n"] == 3
    assert p["mean"] == pytest.approx(-0.08, rel=1e-12)
    # sd(d) = sqrt(0.0012), se = 0.02, t = -4 with 2 degrees of freedom: p = 1 - |t| / sqrt(2 + t^2)
    assert p["p_ttest"] == pytest.approx(1 - 4 / math.sqrt(18), rel=1e-9)
    assert p["p_ttest"] == pytest.approx(stats.ttest_rel(x, base).pvalue, rel=1e-12)
    assert p["dz"] == pytest.approx(-0.08 / math.sqrt(0.0012), rel=1e-9)
    assert (p["ci_low"], p["ci_high"]) == pytest.approx(
        (-0.08 - T975_DF2 * 0.02, -0.08 + T975_DF2 * 0.02), rel=1e-9
    )
    assert math.isnan(p["p_wilcoxon"])  # 3 pairs: too few for the signed-rank test
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([1.0, 2.0], [1.0])


def test_paired_difference_of_constant_differences_is_undefined():
    # 0.2 - 0.3 and 0.1 - 0.2 differ only by rounding: scipy alone would give p ~ 1e-16 and d_z ~ -5e15
    p = paired_difference([0.2, 0.1], [0.3, 0.2])
    assert p["mean"] == pytest.approx(-0.1) and p["ci_low"] == p["ci_high"] == p["mean"]
    assert math.isnan(p["p_ttest"]) and math.isnan(p["dz"])
    zero = paired_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert zero["mean"] == 0.0 and math.isnan(zero["p_ttest"]) and math.isnan(zero["dz"])


def test_wilcoxon_from_six_pairs_exact_value():
    base = np.zeros(6)
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.5])  # every difference positive: W- = 0, p = 2 / 2^6
    p = paired_difference(x, base)
    assert p["p_wilcoxon"] == pytest.approx(2 / 64, rel=1e-12)
    assert math.isnan(paired_difference(x[:5], base[:5])["p_wilcoxon"])
    assert math.isnan(paired_difference(np.ones(6), np.ones(6))["p_wilcoxon"])  # all differences zero


def test_welch_p_matches_hand_computed_value():
    # t = -3 / sqrt(2/3), 4 degrees of freedom (Welch-Satterthwaite); CDF of t_4 in closed form
    t = 3 / math.sqrt(2 / 3)
    u = 1 + t * t / 4
    cdf = 0.5 + 3 / 8 * t / math.sqrt(u) * (1 - t * t / (12 * u))
    assert welch_p([1, 2, 3], [4, 5, 6]) == pytest.approx(2 * (1 - cdf), rel=1e-9)
    assert math.isnan(welch_p([1.0], [4, 5, 6]))


@pytest.fixture
def results(tmp_path):
    results_dir = tmp_path / "results" / CONFIG_NAME
    grid = write_standard_runs(results_dir)
    return results_dir, grid


def test_collect_keeps_every_run_with_status_and_provenance(results):
    results_dir, grid = results
    extra = RunSpec("tetris", "tfn", "rpp", 0)  # in the grid, never ran
    board = collect(results_dir, grid + [extra])
    assert len(board) == len(grid) + 1
    assert board["status"].value_counts().to_dict() == {"ok": 16, "diverged": 1, "failed": 1, "missing": 1}
    for column in [
        "task",
        "model",
        "family",
        "method",
        "seed",
        "status",
        "reason",
        "metric",
        "metric_unit",
        "test_metric",
        "test_error_rate",
        "test_accuracy",
        "train_loss",
        "test_loss",
        "val_loss",
        "gen_gap",
        "equiv_init_exact",
        "equiv_init_approx",
        "equiv_final_exact",
        "equiv_final_approx",
        "equiv_final_exact_abs",
        "wall_time_s",
        "time_per_step_s",
        "version_torch",
        "git_commit",
        "device",
        "config_hash",
        "run_dir",
    ]:
        assert column in board, column
    diverged = board[board["status"] == "diverged"].iloc[0]
    assert (diverged["model"], diverged["method"], diverged["seed"]) == ("tfn", "relaxed", 2)
    assert "non-finite" in diverged["reason"] and diverged["diverged_epoch"] == 3
    assert math.isnan(diverged["test_metric"])
    missing = board[board["status"] == "missing"].iloc[0]
    assert missing["run_dir"] == "runs/tetris/tfn/rpp/seed0"
    ok = board[(board["task"] == "tetris") & (board["model"] == "tfn") & (board["method"] == "equivariant")]
    assert ok["test_metric"].tolist() == [0.30, 0.20, 0.25]
    assert ok["test_error_rate"].tolist() == ok["test_metric"].tolist()


def test_aggregate_counts_pairs_by_seed_and_ranks(results):
    results_dir, grid = results
    board = collect(results_dir, grid + [RunSpec("tetris", "tfn", "rpp", 0)])
    agg = aggregate(board).set_index(["task", "model", "method"])
    relaxed = agg.loc[("tetris", "tfn", "relaxed")]
    assert (relaxed["n_ok"], relaxed["n_total"], relaxed["n_diverged"]) == (2, 3, 1)
    assert "seed 2: diverged" in relaxed["not_ok"]
    # the diverged seed 2 is left out of the pairing: d = [0.20 - 0.30, 0.19 - 0.20]
    assert relaxed["test_metric_vs_equivariant_n"] == 2
    assert relaxed["test_metric_vs_equivariant_mean"] == pytest.approx(-0.055, rel=1e-12)
    assert relaxed["test_metric_vs_equivariant_p_ttest"] == pytest.approx(
        stats.ttest_rel([0.20, 0.19], [0.30, 0.20]).pvalue, rel=1e-12
    )
    assert relaxed["gen_gap_vs_equivariant_n"] == 2
    baseline = agg.loc[("tetris", "tfn", "equivariant")]
    assert baseline["test_metric_vs_equivariant_n"] == 0 and math.isnan(
        baseline["test_metric_vs_equivariant_p_ttest"]
    )
    rpp = agg.loc[("tetris", "tfn", "rpp")]
    assert (rpp["n_ok"], rpp["n_missing"], rpp["n_total"]) == (0, 1, 1) and pd.isna(rpp["rank"])
    failed = agg.loc[("tetris", "vn", "relaxed")]
    assert (failed["n_ok"], failed["n_failed"]) == (2, 1)

    # tetris (lower is better): means tfn/relaxed 0.195 < tfn/eq 0.25 < vn/relaxed 0.46 < vn/eq 0.51
    tetris = agg.loc["tetris"].dropna(subset=["rank"])
    assert tetris["rank"].to_dict() == {
        ("tfn", "relaxed"): 1,
        ("tfn", "equivariant"): 2,
        ("vn", "relaxed"): 3,
        ("vn", "equivariant"): 4,
    }
    assert tetris["is_best"].to_dict()[("tfn", "relaxed")] and tetris["is_best"].sum() == 1
    best = [0.20, 0.19]
    for key, values in {
        ("tfn", "equivariant"): [0.30, 0.20, 0.25],
        ("vn", "equivariant"): [0.50, 0.52, 0.51],
    }.items():
        p = stats.ttest_ind(values, best, equal_var=False).pvalue
        assert tetris.loc[key, "p_vs_best"] == pytest.approx(p, rel=1e-12)
        assert bool(tetris.loc[key, "tied_with_best"]) == (p >= 0.05)
    assert bool(tetris.loc[("tfn", "equivariant"), "tied_with_best"])  # p ~ 0.2
    assert not bool(tetris.loc[("vn", "equivariant"), "tied_with_best"])  # p < 0.05

    # toy_acc (higher is better): relaxed 0.90 beats equivariant 0.81
    toy = agg.loc["toy_acc"]
    assert toy["rank"].to_dict() == {("tfn", "relaxed"): 1, ("tfn", "equivariant"): 2}
    assert not bool(toy.loc[("tfn", "equivariant"), "tied_with_best"])
    assert toy.loc[("tfn", "relaxed"), "test_metric_vs_equivariant_mean"] == pytest.approx(0.09, rel=1e-9)


def test_tables_round_trip_and_errors(results, tmp_path):
    results_dir, grid = results
    board = collect(results_dir, grid)
    agg = aggregate(board)
    lb_path, agg_path = write_tables(results_dir, board, agg)
    assert lb_path.name == "leaderboard.csv" and agg_path.name == "aggregates.csv"
    board2, agg2 = read_tables(results_dir)
    pd.testing.assert_series_equal(board2["test_metric"], board["test_metric"])
    p_column = "test_metric_vs_equivariant_p_ttest"
    pd.testing.assert_series_equal(agg2[p_column], agg[p_column])
    assert board2["status"].tolist() == board["status"].tolist()

    with pytest.raises(LeaderboardError, match="run `relaxbench collect` first"):
        read_tables(tmp_path / "nowhere")
    with pytest.raises(LeaderboardError, match="no run records"):
        collect(tmp_path / "empty")
    bad = write_run(results_dir, RunSpec("tetris", "tfn", "relaxed", 7), 0.3) / "record.json"
    bad.write_text(json.dumps({**json.loads(bad.read_text()), "surprise": 1}))
    with pytest.raises(LeaderboardError, match=r"seed7/record.json: unreadable run record .*surprise"):
        collect(results_dir)


def test_collect_flags_records_of_an_older_metric_version(results):
    results_dir, grid = results
    path = results_dir / "runs/tetris/tfn/equivariant/seed0/record.json"
    record = json.loads(path.read_text())
    del record["run_config"]["metric_version"]  # written before the version was recorded
    path.write_text(json.dumps(record))
    with pytest.warns(UserWarning, match=r"1 run record\(s\) were measured with an older metric version"):
        board = collect(results_dir, grid)
    assert board.loc[board["run_dir"] == "runs/tetris/tfn/equivariant/seed0", "metric_version"].item() == 1
    assert set(
        board.loc[board["run_dir"] != "runs/tetris/tfn/equivariant/seed0", "metric_version"].dropna()
    ) == {METRIC_VERSION}


def test_activity_columns_flag_inactive_relaxation(results):
    results_dir, grid = results
    board = collect(results_dir, grid)
    ok = board[board["status"] == "ok"].set_index(["task", "model", "method", "seed"])
    tfn = ok.loc[("tetris", "tfn", "relaxed", 0)]
    assert tfn["free_share_peak"] == pytest.approx(0.05)
    assert tfn["projection_gap"] == pytest.approx(0.20 * 0.9 - 0.20)  # unprojected - projected
    assert not tfn["relaxation_inactive"]
    assert bool(ok.loc[("tetris", "vn", "relaxed", 1), "relaxation_inactive"])
    base = ok.loc[("tetris", "tfn", "equivariant", 0)]
    assert math.isnan(base["free_share_peak"]) and math.isnan(base["projection_gap"])
    assert not base["relaxation_inactive"]
    agg = aggregate(board).set_index(["task", "model", "method"])
    assert agg.loc[
        ("tetris", "vn", "relaxed"), ["n_relaxation_inactive", "relaxation_inactive"]
    ].tolist() == [2, True]
    assert agg.loc[
        ("tetris", "tfn", "relaxed"), ["n_relaxation_inactive", "relaxation_inactive"]
    ].tolist() == [0, False]
    assert not agg.loc[("tetris", "tfn", "equivariant"), "relaxation_inactive"]
    assert agg.loc[("tetris", "tfn", "relaxed"), "free_share_peak_mean"] == pytest.approx(0.05)
    write_tables(results_dir, board, agg.reset_index())
    board_read, _ = read_tables(results_dir)
    assert board_read["relaxation_inactive"].dtype == bool
