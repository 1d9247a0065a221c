"""Run records -> one tidy table (one row per run) -> aggregates with paired statistics.

``collect`` reads every ``runs/<task>/<model>/<method>/seed<k>/record.json`` below a config's results folder
(``<model>``: the run folder, ``<model>+<label>`` for a swept cell) into one row each and matches them with the config's grid; runs that are not ``ok`` stay in the table with
their status and reason: ``diverged`` and ``failed`` (from the record), ``missing`` (a run of the grid without
a record) and ``stale`` (a record the grid does not describe: a run it no longer lists, or one that ran with
other settings than the config's, by ``config_hash``).

``aggregate`` summarises the ``ok`` runs of every task x model x method of the grid (``diverged``, ``failed``
and ``missing`` runs are counted, never used in a statistic; ``stale`` runs are left out entirely):

* per quantity (:data:`QUANTITIES`): ``n``, mean, sample standard deviation (ddof 1) and the 95 % t-based
  confidence interval of the mean (``scipy.stats.ttest_1samp(...).confidence_interval``);
* for the primary test metric and the generalization gap: the difference from the ``equivariant`` method of
  the same task x model x sweep cell, paired by seed (``method - equivariant``), its 95 % CI, the paired
  t-test p-value (``scipy.stats.ttest_rel``), the Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``,
  only from :data:`WILCOXON_MIN_PAIRS` pairs on: below that its smallest two-sided p-value exceeds 0.05) and
  the effect size Cohen's ``d_z = mean(d) / sd(d) = t / sqrt(n)``;
* for the primary test metric also its power (:mod:`relaxbench.verdicts`): the minimum detectable effect of
  the paired test (``_mde``, the metric's unit), the stated effect it should see (``_effect``: the config's
  ``statistics.effect`` times the baseline's mean), the seeds that would see it (``_seeds_needed``), whether
  the comparison had that power (``_powered``) and the verdict (``_verdict``: ``better``, ``worse``,
  ``no difference above MDE`` or ``inconclusive``);
* the rank within the task by mean primary test metric (direction-aware, 1 = best, ties share the lower
  rank) and whether an entry is *tied with the best*: a two-sided Welch t-test
  (``scipy.stats.ttest_ind(equal_var=False)``) of its ``ok`` runs against the best entry's gives
  ``p >= alpha`` (0.05, no correction for multiple comparisons), or cannot separate them (fewer than two
  runs on a side, or both constant and equal, so the p-value is undefined).

Relaxation activity (per run): ``free_share_peak``, the largest epoch mean of any relaxed layer's free-branch
share ``theta ||W x|| / ||f_eq x||`` during training; ``projection_gap = test_metric_unprojected - test_metric``
(the free branch on, at the selected epoch's theta, minus the projected model; NaN where the selected epoch had
theta = 0 or the method does not project); ``relaxation_inactive``, true for a run with relaxed layers whose
peak share stayed below :data:`INACTIVE_SHARE` (1 %): its free branch never did anything, so a tie with
``equivariant`` says nothing about the method. Aggregates count these runs (``n_relaxation_inactive``) and set
``relaxation_inactive`` when every ``ok`` run of the entry was.

Metric columns carry the metric's name, which carries its unit (e.g. ``test_mse_pos``); ``metric`` names
the task's primary metric, ``metric_unit`` its unit and ``lower_is_better`` its direction, and
``test_metric`` repeats its test value so that tables of different tasks line up.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from relaxbench import layout
from relaxbench.config import METRIC_VERSION, RunSpec
from relaxbench.records import LeaderboardError, atomic_write_text, read_record
from relaxbench.verdicts import EFFECT, POWER, minimum_detectable_effect, seeds_needed, verdict

__all__ = [
    "ALPHA",
    "BASELINE",
    "CONFIDENCE",
    "INACTIVE_SHARE",
    "LeaderboardError",
    "PAIRED_QUANTITIES",
    "QUANTITIES",
    "WILCOXON_MIN_PAIRS",
    "aggregate",
    "collect",
    "extra_test_metrics",
    "paired_difference",
    "read_tables",
    "summarize",
    "welch_p",
    "write_tables",
]

BASELINE = "equivariant"
ALPHA = 0.05
CONFIDENCE = 0.95
WILCOXON_MIN_PAIRS = 6
#: A run whose free branches never made this share of their layer's equivariant output is *relaxation inactive*.
INACTIVE_SHARE = 0.01
#: One entry of the aggregates: a method on a task x model cell (``sweep``: a swept cell's label, "" else).
CELL = ["task", "model", "sweep"]
GROUP = [*CELL, "method"]

#: Per-run quantities summarised by :func:`aggregate` (columns of the leaderboard).
QUANTITIES = (
    "test_metric",
    "gen_gap",
    "train_loss",
    "test_loss",
    "test_metric_unprojected",
    "projection_gap",
    "free_share_peak",
    "equiv_init_exact",
    "equiv_init_approx",
    "equiv_final_exact",
    "equiv_final_approx",
    "time_per_step_s",
    "wall_time_s",
)
#: Quantities compared with the ``equivariant`` baseline, paired by seed.
PAIRED_QUANTITIES = ("test_metric", "gen_gap")

#: Leading columns of the leaderboard, in order; metric and version columns follow.
LEAD_COLUMNS = [
    "task",
    "model",
    "sweep",
    "arch",
    "family",
    "method",
    "seed",
    "status",
    "reason",
    "diverged_epoch",
    "metric",
    "metric_unit",
    "lower_is_better",
    "test_metric",
    "gen_gap",
    "test_metric_unprojected",
    "theta_unprojected",
    "projection_gap",
    "free_share_peak",
    "relaxation_inactive",
    "equiv_init_exact",
    "equiv_init_approx",
    "equiv_final_exact",
    "equiv_final_approx",
    "equiv_init_exact_abs",
    "equiv_init_approx_abs",
    "equiv_final_exact_abs",
    "equiv_final_approx_abs",
    "equiv_dtype",
]
TAIL_COLUMNS = [
    "params_total",
    "params_equivariant",
    "params_free",
    "epochs_run",
    "best_epoch",
    "steps",
    "wall_time_s",
    "time_per_step_s",
    "eval_time_s",
    "peak_memory_mb",
    "exported",
    "resumed",
    "device",
    "threads",
    "git_commit",
    "started_at",
    "config_name",
    "config_hash",
    "schema_version",
    "metric_version",
    "run_dir",
]


def _row(record_path: Path, results_dir: Path) -> dict:
    try:
        record = read_record(record_path)
    except (ValueError, TypeError) as err:
        raise LeaderboardError(f"{record_path}: unreadable run record ({err})") from None
    data = asdict(record)
    row = {
        k: v for k, v in data.items() if k not in ("train", "val", "test", "tests", "versions", "run_config")
    }
    splits = {"train": data["train"], "val": data["val"], "test": data["test"], **data["tests"]}
    for split, values in splits.items():
        row.update({f"{split}_{name}": value for name, value in values.items()})
    row["test_metric"] = record.test.get(record.metric)
    row.update({f"{split}_metric": values.get(record.metric) for split, values in data["tests"].items()})
    unprojected = record.test_metric_unprojected
    row["projection_gap"] = (
        None if unprojected is None or row["test_metric"] is None else unprojected - row["test_metric"]
    )
    row["relaxation_inactive"] = (
        record.free_share_peak is not None and record.free_share_peak < INACTIVE_SHARE
    )
    row.update({f"version_{pkg}": version for pkg, version in sorted(record.versions.items())})
    row["metric_version"] = data["run_config"].get("metric_version", 1)  # records before it was kept: 1
    row["sweep"] = data["run_config"].get("sweep", "")
    row.update(data["run_config"].get("axes", {}))  # a swept cell's axis values, one column per axis
    row["run_dir"] = record_path.parent.relative_to(results_dir).as_posix()
    return row


def _missing_row(run: RunSpec, results_dir: Path) -> dict:
    return {
        "task": run.task,
        "model": run.model,
        "sweep": run.sweep,
        **{name: list(v) if isinstance(v, tuple) else v for name, v in run.axes},
        "method": run.method,
        "seed": run.seed,
        "status": "missing",
        "relaxation_inactive": False,
        "reason": "no record.json: the run has not finished (not started, still running, or killed)",
        "run_dir": layout.run_dir(results_dir, run).relative_to(results_dir).as_posix(),
    }


def _stale_reason(row: dict, results_dir: Path, expected: Mapping[RunSpec, str | None] | None) -> str | None:
    """Why a record on disk does not belong to the config's grid, or ``None`` when it does."""
    if expected is None:
        return None
    by_key = {(r.task, r.model, r.sweep, r.method, r.seed): r for r in expected}
    run = by_key.get((row["task"], row["model"], row["sweep"], row["method"], row["seed"]))
    if run is None:
        return "the config's grid has no such run (a model, method, task or seed it no longer lists)"
    if row["run_dir"] != layout.run_dir(results_dir, run).relative_to(results_dir).as_posix():
        return f"the record describes {run.task}/{run.model}/{run.method}/seed{run.seed} but lies elsewhere"
    wanted = expected[run]
    if wanted is not None and row["config_hash"] != wanted:
        return (
            f"ran with other settings (config_hash {row['config_hash']}, the config's is {wanted}); "
            "the workflow reruns it"
        )
    return None


def collect(
    results_dir: str | Path, expected: Iterable[RunSpec] | Mapping[RunSpec, str] | None = None
) -> pd.DataFrame:
    """Every run record below ``results_dir`` (``results/<config>``) as one row; sorted by task, model, method, seed.

    Args:
        results_dir: a config's results folder, holding ``runs/<task>/<model>/<method>/seed<k>/record.json``.
        expected: the config's grid: :func:`relaxbench.config.expand_runs`, or better
            :func:`relaxbench.config.grid_hashes` (each run with its ``config_hash``). A run of it without a
            record gets a row with status ``missing``; a record of a run outside it, in another run's folder,
            or (with hashes) of other settings gets status ``stale`` with the reason: listed, never averaged.

    Returns:
        The leaderboard: :data:`LEAD_COLUMNS`, then ``train_* / val_* / test_*`` metric columns (names carry
        units), then timings and provenance (:data:`TAIL_COLUMNS`, ``version_<package>``).
    """
    results_dir = Path(results_dir)
    if expected is not None and not isinstance(expected, Mapping):
        expected = dict.fromkeys(expected)
    rows = [_row(path, results_dir) for path in layout.record_paths(results_dir)]
    for row in rows:
        reason = _stale_reason(row, results_dir, expected)
        if reason is not None:
            row["status"], row["reason"] = "stale", reason
    if expected is not None:
        found = {
            (r["task"], r["model"], r["sweep"], r["method"], r["seed"])
            for r in rows
            if r["status"] != "stale"
        }
        rows += [
            _missing_row(run, results_dir)
            for run in expected
            if (run.task, run.model, run.sweep, run.method, run.seed) not in found
        ]
    if not rows:
        raise LeaderboardError(
            f"{results_dir}: no run records (runs/<task>/<model>/<method>/seed<k>/record.json)"
        )
    board = pd.DataFrame(rows)
    fixed = set(LEAD_COLUMNS) | set(TAIL_COLUMNS)
    losses = {f"{split}_loss" for split in ("train", "val", "test")}  # present even when no run finished
    metrics = sorted(
        losses | {c for c in board if c.startswith(("train_", "val_", "test_")) and c not in fixed}
    )
    versions = sorted(c for c in board if c.startswith("version_"))
    axes = axis_columns(board)
    newer = [
        c for c in board if c not in fixed.union(metrics, versions, axes)
    ]  # record fields added after this module
    board = board.reindex(
        columns=LEAD_COLUMNS[:3] + axes + LEAD_COLUMNS[3:] + metrics + newer + TAIL_COLUMNS + versions
    )
    board["sweep"] = board["sweep"].fillna("")
    measured = ~board["status"].isin(["missing", "stale"])
    older = board.loc[measured & (board["metric_version"] != METRIC_VERSION), "run_dir"]
    if len(older):
        warnings.warn(
            f"{results_dir}: {len(older)} run record(s) were measured with an older metric version than "
            f"{METRIC_VERSION} (e.g. {older.iloc[0]}): their metrics do not compare with the others'; "
            "rerun them (Snakemake does, since the version is part of every run's settings)",
            stacklevel=2,
        )
    return board.sort_values([*GROUP, "seed"], kind="stable").reset_index(drop=True)


def axis_columns(table: pd.DataFrame) -> list[str]:
    """The sweep axis columns of a leaderboard or aggregates table (``params.<key>``, ``training.<key>``,
    ``<task>.<key>``: the only column names with a dot), in table order."""
    return [c for c in table if "." in c]


def extra_test_metrics(board: pd.DataFrame) -> tuple[str, ...]:
    """The primary metric's columns of further test splits (``test_<name>_metric``, e.g. ``test_domain_metric``
    of the smoke plumes; see ``Task.test_splits``), which :func:`aggregate` summarises like ``test_metric``."""
    return tuple(sorted(c for c in board if re.fullmatch(r"test_\w+_metric", c)))


def _quiet_stats(func, *args, **kwargs):
    """Call a scipy.stats test with its degenerate-data RuntimeWarnings silenced (callers handle those cases)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return func(*args, **kwargs)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """``n``, ``mean``, ``std`` (ddof 1) and the 95 % t confidence interval of the mean; NaNs are ignored.

    ``std`` and the interval are NaN below two values; a constant sample has the zero-width interval.
    """
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    out = {"n": len(v), "mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    if len(v):
        out["mean"] = float(np.mean(v))
    if len(v) >= 2:
        out["std"] = float(np.std(v, ddof=1))
        ci = _quiet_stats(stats.ttest_1samp, v, 0.0).confidence_interval(CONFIDENCE)
        out["ci_low"], out["ci_high"] = float(ci.low), float(ci.high)
    return out


def paired_difference(x: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Paired comparison of ``x`` with ``baseline`` (same order, e.g. by seed): ``d = x - baseline``.

    Returns ``n``, ``mean``, ``sd`` (ddof 1) and 95 % CI of ``d``, ``p_ttest`` (paired t-test, two-sided), ``p_wilcoxon``
    (signed-rank, two-sided; NaN below :data:`WILCOXON_MIN_PAIRS` pairs or when every ``d`` is 0) and
    ``dz`` (Cohen's d_z = t / sqrt(n) = mean(d) / sd(d)). The t-test and d_z are undefined (NaN) below two
    pairs and when ``d`` is constant up to rounding (sd(d) <= 1e-12 max|d|, where scipy would report a
    rounding-driven t); the interval of a constant ``d`` has zero width.
    """
    x, baseline = np.asarray(x, dtype=float), np.asarray(baseline, dtype=float)
    if x.shape != baseline.shape:
        raise ValueError(f"paired samples differ in length: {x.shape} vs {baseline.shape}")
    d = x - baseline
    n = len(d)
    out = {
        "n": n,
        "mean": float(np.mean(d)) if n else math.nan,
        "sd": float(np.std(d, ddof=1)) if n >= 2 else math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "p_ttest": math.nan,
        "p_wilcoxon": math.nan,
        "dz": math.nan,
    }
    if n >= 2 and out["sd"] <= 1e-12 * np.max(np.abs(d)):
        out.update(sd=0.0, ci_low=out["mean"], ci_high=out["mean"])
    elif n >= 2:
        res = _quiet_stats(stats.ttest_rel, x, baseline)
        ci = res.confidence_interval(CONFIDENCE)
        out.update(
            ci_low=float(ci.low),
            ci_high=float(ci.high),
            p_ttest=float(res.pvalue),
            dz=float(res.statistic) / math.sqrt(n),
        )
    if n >= WILCOXON_MIN_PAIRS and np.any(d != 0):
        out["p_wilcoxon"] = float(_quiet_stats(stats.wilcoxon, x, baseline).pvalue)
    return out


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch t-test p-value of two independent samples; NaN when either has fewer than 2 values."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    return float(_quiet_stats(stats.ttest_ind, a, b, equal_var=False).pvalue)


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in values.items()}


def _not_ok_summary(runs: pd.DataFrame) -> str:
    bad = runs[runs["status"] != "ok"]
    return "; ".join(
        f"seed {r.seed}: {r.status}" + (f" ({r.reason})" if isinstance(r.reason, str) else "")
        for r in bad.itertuples()
    )


def _power_columns(
    row: dict, baseline_mean: float, lower_is_better: bool, alpha: float, effect: float, power: float
) -> dict:
    """The power analysis and verdict of a row's paired test-metric comparison (NaN / empty for the baseline
    itself and where the baseline has no ``ok`` run)."""
    prefix = f"test_metric_vs_{BASELINE}"
    if math.isnan(baseline_mean):
        return _prefixed(prefix, dict.fromkeys(("mde", "effect", "seeds_needed", "powered", "verdict")))
    n, sd = row[f"{prefix}_n"], row[f"{prefix}_sd"]
    target = effect * abs(baseline_mean)
    mde = minimum_detectable_effect(sd, n, alpha, power)
    return _prefixed(
        prefix,
        {
            "mde": mde,
            "effect": target,
            "seeds_needed": seeds_needed(sd, target, alpha, power),
            "powered": bool(mde <= target),
            "verdict": verdict(
                row[f"{prefix}_mean"], sd, n, row[f"{prefix}_p_ttest"], mde, target, lower_is_better, alpha
            ),
        },
    )


def aggregate(
    board: pd.DataFrame, alpha: float = ALPHA, effect: float = EFFECT, power: float = POWER
) -> pd.DataFrame:
    """One row per task x model x cell x method of a :func:`collect` table: counts, summaries, paired tests,
    ranks (a cell is a point of a model entry's sweeps, ``sweep`` its label; "" without sweeps).

    Columns: ``task, model, sweep``, the sweep axis columns (:func:`axis_columns`), ``method, family, metric,
    metric_unit, lower_is_better``; ``n_total, n_ok,
    n_diverged, n_failed, n_missing`` and ``not_ok`` (seed, status and reason of every run left out);
    ``n_relaxation_inactive`` (ok runs) and ``relaxation_inactive`` (all ok runs, at least one);
    ``<q>_n/_mean/_std/_ci_low/_ci_high`` for every ``q`` in :data:`QUANTITIES` and in
    :func:`extra_test_metrics`;
    ``<q>_vs_equivariant_n/_mean/_ci_low/_ci_high/_p_ttest/_p_wilcoxon/_dz`` for ``q`` in
    :data:`PAIRED_QUANTITIES` (NaN for the baseline itself and where it has no ``ok`` run);
    ``test_metric_vs_equivariant_mde/_effect/_seeds_needed/_powered/_verdict`` (:func:`_power_columns`;
    ``effect`` is the stated effect as a fraction of the baseline's mean test metric, ``power`` the power
    the comparisons are planned for);
    ``rank, is_best, tied_with_best, p_vs_best`` within the task (see the module docstring).
    """
    board = board[board["status"] != "stale"]
    board = board.assign(sweep=board["sweep"].fillna("")) if "sweep" in board else board.assign(sweep="")
    axes = axis_columns(board)
    ok = board[board["status"] == "ok"]
    meta = (
        board.dropna(subset=["metric"]).groupby("task")[["metric", "metric_unit", "lower_is_better"]].first()
    )
    families = board.dropna(subset=["family"]).groupby("model")["family"].first()
    rows, samples = [], {}
    quantities = QUANTITIES + extra_test_metrics(board)
    for key, runs in board.groupby(GROUP, sort=True):
        task, model, sweep, method = key
        good = runs[runs["status"] == "ok"]
        samples[key] = good["test_metric"].dropna().to_numpy(dtype=float)
        counts = runs["status"].value_counts()
        row = {
            "task": task,
            "model": model,
            "sweep": sweep,
            **{a: runs[a].iloc[0] for a in axes},
            "method": method,
            "family": families.get(model),
            **{c: meta.at[task, c] if task in meta.index else None for c in meta.columns},
            "n_total": len(runs),
            **{f"n_{s}": int(counts.get(s, 0)) for s in ("ok", "diverged", "failed", "missing")},
            "n_relaxation_inactive": int(good["relaxation_inactive"].eq(True).sum()),
            "not_ok": _not_ok_summary(runs),
        }
        for q in quantities:
            row.update(_prefixed(q, summarize(good[q])))
        base = ok[
            (ok["task"] == task)
            & (ok["model"] == model)
            & (ok["sweep"] == sweep)
            & (ok["method"] == BASELINE)
        ]
        for q in PAIRED_QUANTITIES:
            prefix = f"{q}_vs_{BASELINE}"
            if method == BASELINE or base.empty:
                row.update(_prefixed(prefix, paired_difference([], [])))
                continue
            pairs = good[["seed", q]].merge(base[["seed", q]], on="seed", suffixes=("", "_base")).dropna()
            row.update(_prefixed(prefix, paired_difference(pairs[q], pairs[f"{q}_base"])))
        row["relaxation_inactive"] = bool(len(good)) and row["n_relaxation_inactive"] == len(good)
        lower = task not in meta.index or bool(meta.at[task, "lower_is_better"])
        baseline_mean = float(base["test_metric"].mean()) if method != BASELINE and len(base) else math.nan
        row.update(_power_columns(row, baseline_mean, lower, alpha, effect, power))
        rows.append(row)
    agg = pd.DataFrame(rows)
    agg["rank"], agg["is_best"], agg["tied_with_best"], agg["p_vs_best"] = math.nan, False, False, math.nan
    for task, idx in agg.groupby("task").groups.items():
        if task not in meta.index:  # no run of the task left a record
            continue
        sign = 1.0 if bool(meta.loc[task, "lower_is_better"]) else -1.0
        score = (sign * agg.loc[idx, "test_metric_mean"]).dropna()
        if score.empty:
            continue
        agg.loc[score.index, "rank"] = stats.rankdata(score.to_numpy(), method="min")
        best = score.idxmin()
        best_sample = samples[tuple(agg.loc[best, GROUP])]
        for i in score.index:
            p = math.nan if i == best else welch_p(samples[tuple(agg.loc[i, GROUP])], best_sample)
            agg.loc[i, "p_vs_best"] = p
            agg.loc[i, "tied_with_best"] = bool(i == best or not p < alpha)
        agg.loc[best, "is_best"] = True
    agg["rank"] = agg["rank"].astype("Int64")
    return agg


def write_tables(results_dir: str | Path, board: pd.DataFrame, aggregates: pd.DataFrame) -> tuple[Path, Path]:
    """Write ``leaderboard.csv`` and ``aggregates.csv`` into ``results_dir`` atomically; returns their paths."""
    results_dir = Path(results_dir)
    paths = results_dir / layout.LEADERBOARD_CSV, results_dir / layout.AGGREGATES_CSV
    for path, table in zip(paths, (board, aggregates)):
        atomic_write_text(path, table.to_csv(index=False))
    return paths


def read_tables(results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the tables :func:`write_tables` wrote (floats round-trip exactly; an empty ``sweep`` is "")."""
    results_dir = Path(results_dir)
    tables = []
    for name in (layout.LEADERBOARD_CSV, layout.AGGREGATES_CSV):
        path = results_dir / name
        if not path.is_file():
            raise LeaderboardError(f"{path} does not exist; run `relaxbench collect` first")
        table = pd.read_csv(path, float_precision="round_trip", keep_default_na=True)
        if "sweep" in table:
            table["sweep"] = table["sweep"].fillna("").astype(str)
        tables.append(table)
    return tables[0], tables[1]
