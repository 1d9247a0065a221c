"""Relaxation methods ranked against each other across (task, model) cells (Demsar, JMLR 2006).

A *cell* is one task x model (x sweep point); its score of a method is the mean test metric over seeds (the aggregates'
``test_metric_mean``, sign-flipped where higher is better). Within a cell the methods get ranks 1 (best) to k
(ties share the average rank). Comparing ranks across cells needs every method in every cell (a complete
block design), while configs run some methods on some models only; :func:`rank_methods` therefore ranks on the
largest complete block: among the sets of methods run in at least one common cell, one on which the tests below
can run (at least 3 methods on 2 cells) if any, then the one that maximises ``methods x cells`` (ties: more
cells); it says which methods and cells that is (the default config: the six methods of its tfn and N-body
baseline cells on those two cells, rather than ``equivariant`` and ``relaxed`` on all eight).

On that block:

* **mean rank** per method (lower is better);
* **Friedman test** (``scipy.stats.friedmanchisquare``) of "all methods rank alike", from 3 methods and 2 cells;
* **Nemenyi post-hoc test** (``scikit_posthocs.posthoc_nemenyi_friedman``): the p-value of every pair of methods;
  two methods are *distinguishable* where it is below alpha. The critical-difference diagram
  (:func:`relaxbench.report.figures.critical_difference_diagram`, drawn by scikit-posthocs) joins methods that
  are not.

scikit-posthocs (0.17.1, in the lock) rather than autorank: it is one maintained package already depending only on
numpy / scipy / pandas / matplotlib / seaborn / statsmodels (all in the lock), and it draws the CD diagram itself;
autorank would add its own decision logic over the same tests.

The verdicts against ``equivariant`` per cell are the leaderboard's (:mod:`relaxbench.verdicts`), not recomputed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
import scikit_posthocs
from scipy import stats

from relaxbench.verdicts import VERDICTS

__all__ = ["MIN_CELLS", "MIN_METHODS", "Ranking", "rank_methods", "verdict_counts"]

VERDICT_COLUMN = "test_metric_vs_equivariant_verdict"
#: The Friedman test and the Nemenyi post-hoc need at least this many methods and cells.
MIN_METHODS, MIN_CELLS = 3, 2


@dataclass
class Ranking:
    """Ranks of the methods on a complete block of cells (module docstring).

    Attributes:
        methods: the ranked methods, best mean rank first; cells: the ``(task, model)`` cells used.
        ranks: ``[cells x methods]`` rank within each cell (1 = best).
        mean_rank: per method, over ``cells``.
        friedman_p: p-value of the Friedman test (``None`` below 3 methods or 2 cells).
        nemenyi: ``[methods x methods]`` Nemenyi p-values (``None`` where Friedman is ``None``).
        note: why no test was run, or ``""``.
        left_out: methods of the aggregates not in the block (they miss one of its cells).
    """

    methods: list[str]
    cells: list[tuple[str, str]]
    ranks: pd.DataFrame
    mean_rank: pd.Series
    friedman_p: float | None = None
    nemenyi: pd.DataFrame | None = None
    note: str = ""
    left_out: list[str] = field(default_factory=list)

    def distinguishable(self, a: str, b: str, alpha: float = 0.05) -> bool:
        """Whether the Nemenyi test separates methods ``a`` and ``b`` at level ``alpha``."""
        return self.nemenyi is not None and bool(self.nemenyi.loc[a, b] < alpha)


def _scores(agg: pd.DataFrame) -> pd.DataFrame:
    """``[cells x methods]``: mean test metric, negated where higher is better (NaN: not run or no ok run). A
    cell is ``(task, model)``, the model carrying its sweep cell's label where it has one (``"egnn
    [nbody.n_train=100]"``): every point of a sweep is a cell of its own."""
    sign = agg["lower_is_better"].map(lambda v: 1.0 if v in (True, 1, "True") or pd.isna(v) else -1.0)
    sweep = agg["sweep"] if "sweep" in agg else pd.Series(pd.NA, index=agg.index)
    cell = [m if pd.isna(w) or w == "" else f"{m} [{w}]" for m, w in zip(agg["model"], sweep)]
    scored = agg.assign(score=sign * agg["test_metric_mean"], cell=cell)
    table = scored.pivot_table(index=["task", "cell"], columns="method", values="score", aggfunc="first")
    return table.rename_axis(index=["task", "model"])


def _complete_block(scores: pd.DataFrame) -> tuple[list[str], list[tuple[str, str]]]:
    """The methods and cells of the largest complete block (module docstring).

    The candidate method sets: the methods run in at least ``k`` cells, for every ``k``; the methods of each
    cell; those common to each pair of cells (a set of methods that a config runs on a few cheap cells, beside
    one run on one more cell, is found by the pair, not by a coverage threshold). ``O(cells^2)`` candidates."""
    present = scores.notna()
    coverage = present.sum().sort_values(ascending=False, kind="stable")
    order = list(coverage.index)  # most widely run first, for a stable method order
    held = [frozenset(present.columns[row]) for row in present.to_numpy()]
    candidates = {frozenset(m for m in order if coverage[m] >= k) for k in set(coverage)}
    candidates |= set(held) | {a & b for i, a in enumerate(held) for b in held[i + 1 :]}
    best: tuple[tuple[bool, int, int], list[str], list] = ((False, 0, 0), [], [])
    for candidate in candidates:
        methods = [m for m in order if m in candidate]
        cells = list(present.index[present[methods].all(axis=1)]) if methods else []
        testable = len(methods) >= MIN_METHODS and len(cells) >= MIN_CELLS
        key = (testable, len(methods) * len(cells), len(cells))
        if len(methods) >= 2 and cells and (key, methods) > (best[0], best[1]):
            best = (key, methods, cells)
    return best[1], best[2]


def rank_methods(agg: pd.DataFrame) -> Ranking:
    """Rank the methods of an aggregates table (:func:`relaxbench.leaderboard.aggregate`); see the module docstring."""
    scores = _scores(agg)
    methods, cells = _complete_block(scores)
    left_out = sorted(set(scores.columns) - set(methods))
    if not methods:
        empty = pd.DataFrame()
        return Ranking(
            [],
            [],
            empty,
            pd.Series(dtype=float),
            note="no cell has two methods with ok runs",
            left_out=left_out,
        )
    block = scores.loc[cells, methods]
    ranks = block.rank(axis=1, method="average")
    mean_rank = ranks.mean().sort_values(kind="stable")
    ranking = Ranking(list(mean_rank.index), [tuple(c) for c in cells], ranks, mean_rank, left_out=left_out)
    if len(methods) < MIN_METHODS or len(cells) < MIN_CELLS:
        ranking.note = (
            f"the Friedman and Nemenyi tests need at least {MIN_METHODS} methods run on at least {MIN_CELLS} common "
            f"cells; the largest complete block has {len(methods)} methods on {len(cells)} cell(s)"
        )
        return ranking
    ranking.friedman_p = float(stats.friedmanchisquare(*(block[m].to_numpy() for m in methods)).pvalue)
    nemenyi = scikit_posthocs.posthoc_nemenyi_friedman(block.to_numpy())
    nemenyi.index = nemenyi.columns = methods
    ranking.nemenyi = nemenyi.loc[ranking.methods, ranking.methods]
    if math.isnan(ranking.friedman_p):  # every cell ranks the methods identically tied
        ranking.note = "the methods tie in every cell: the Friedman statistic is undefined"
    return ranking


def verdict_counts(agg: pd.DataFrame) -> pd.DataFrame:
    """``[methods x verdicts]``: how many cells gave each verdict against ``equivariant`` (the leaderboard's)."""
    compared = agg[agg[VERDICT_COLUMN].notna()]
    counts = compared.groupby("method")[VERDICT_COLUMN].value_counts().unstack(fill_value=0)
    return counts.reindex(columns=list(VERDICTS), fill_value=0)
