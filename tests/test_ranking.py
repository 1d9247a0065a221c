"""Methods ranked across cells: complete block, mean ranks, Friedman + Nemenyi, the CD diagram, verdict counts."""

import numpy as np
import pandas as pd
import pytest

from relaxbench.ranking import rank_methods, verdict_counts
from relaxbench.report.figures import critical_difference_diagram

METHODS = ["equivariant", "relaxed", "dual_ascent", "symmetrised"]


def aggregates(n_cells=6, extra=True, seed=0) -> pd.DataFrame:
    """``relaxed`` best and ``symmetrised`` worst in every cell (``toy`` higher-is-better cells flipped); ``rpp`` in
    two cells only."""
    rng = np.random.default_rng(seed)
    rows = []
    for cell in range(n_cells):
        lower = cell % 2 == 0
        for rank, method in enumerate(["relaxed", "dual_ascent", "equivariant", "symmetrised"]):
            value = rank + 0.1 * rng.random()
            rows.append(
                {
                    "task": f"task{cell}",
                    "model": "m",
                    "method": method,
                    "lower_is_better": lower,
                    "test_metric_mean": value if lower else -value,
                    "test_metric_vs_equivariant_verdict": None if method == "equivariant" else "inconclusive",
                }
            )
        if extra and cell < 2:
            rows.append({**rows[-1], "method": "rpp", "test_metric_mean": 0.0})
    return pd.DataFrame(rows)


def test_ranks_on_the_largest_complete_block_in_the_metrics_direction():
    ranking = rank_methods(aggregates())
    assert ranking.left_out == ["rpp"] and len(ranking.cells) == 6
    assert ranking.methods == ["relaxed", "dual_ascent", "equivariant", "symmetrised"]
    assert ranking.mean_rank.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert ranking.friedman_p < 1e-3
    assert ranking.distinguishable("relaxed", "symmetrised")
    assert not ranking.distinguishable("relaxed", "dual_ascent")
    assert ranking.nemenyi.loc["relaxed", "symmetrised"] == ranking.nemenyi.loc["symmetrised", "relaxed"]


def test_a_block_the_tests_can_use_wins_over_a_larger_one():
    """Two methods everywhere (8 cells) against four methods on two cells: the four are ranked and tested."""
    agg = aggregates(n_cells=2, extra=False)
    others = aggregates(n_cells=8, extra=False)
    others = others[others["method"].isin(["equivariant", "relaxed"]) & (others["task"] >= "task2")]
    ranking = rank_methods(pd.concat([agg, others]))
    assert len(ranking.methods) == 4 and len(ranking.cells) == 2 and ranking.friedman_p is not None


def test_the_block_of_a_few_cheap_cells_is_found_beside_a_method_run_once_more():
    """The default config's shape: two methods everywhere, four more on two cheap cells, and one of those four
    (``rpp``) also on a third cell. Ranking by coverage alone would mix ``rpp`` in and keep one cell; the block
    is the two cheap cells' common methods."""
    cheap = aggregates(n_cells=2, extra=False)
    wide = aggregates(n_cells=8, extra=False)
    wide = wide[wide["method"].isin(["equivariant", "relaxed"]) & (wide["task"] >= "task2")]
    rpp = pd.DataFrame(
        [{**cheap.iloc[0].to_dict(), "method": "rpp"}, {**wide.iloc[0].to_dict(), "method": "rpp"}]
    )
    ranking = rank_methods(pd.concat([cheap, wide, rpp]))
    assert sorted(ranking.methods) == sorted(METHODS) and len(ranking.cells) == 2
    assert ranking.left_out == ["rpp"] and ranking.friedman_p is not None


def test_every_sweep_point_is_a_cell_of_its_own():
    """Two sweep points of one model on one task are two cells (not the first of them twice)."""
    points = aggregates(n_cells=2, extra=False).assign(task="nbody", model="egnn")
    points["sweep"] = np.where(points.index < len(points) // 2, "nbody.n_train=100", "nbody.n_train=300")
    ranking = rank_methods(points)
    assert ranking.cells == [("nbody", "egnn [nbody.n_train=100]"), ("nbody", "egnn [nbody.n_train=300]")]
    assert ranking.friedman_p is not None


def test_too_small_a_block_ranks_without_tests():
    ranking = rank_methods(aggregates(n_cells=1, extra=False))
    assert ranking.mean_rank.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert ranking.friedman_p is None and ranking.nemenyi is None and "at least 3 methods" in ranking.note
    assert rank_methods(aggregates().iloc[:0]).methods == []


def test_cd_diagram_is_drawn_only_after_a_post_hoc_test(tmp_path):
    path = critical_difference_diagram(rank_methods(aggregates()), tmp_path / "cd.png")
    assert path.is_file() and path.stat().st_size > 1000
    assert critical_difference_diagram(rank_methods(aggregates(n_cells=1)), tmp_path / "no.png") is None


def test_verdict_counts_are_the_leaderboards():
    counts = verdict_counts(aggregates())
    assert counts.loc["relaxed", "inconclusive"] == 6 and counts.loc["rpp", "inconclusive"] == 2
    assert "equivariant" not in counts.index
    assert list(counts.columns) == ["better", "worse", "no difference above MDE", "inconclusive"]


@pytest.mark.parametrize("flip", [False, True])
def test_ties_share_the_average_rank(flip):
    agg = aggregates(n_cells=3, extra=False)
    agg.loc[agg["method"] == "dual_ascent", "test_metric_mean"] = agg.loc[
        agg["method"] == "relaxed", "test_metric_mean"
    ].to_numpy()
    ranking = rank_methods(agg.iloc[::-1] if flip else agg)
    assert ranking.mean_rank["relaxed"] == ranking.mean_rank["dual_ascent"] == 1.5
