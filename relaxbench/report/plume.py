"""The smoke-plume section of the report: the paper's Table 2, rollout error curves, velocity-field pictures.

Table 2 of the paper has one row per model x method (Conv, Equiv, RPP, Lift, RSteer, RSteer + the paper's
relaxation) and one column per symmetry (rotation, scale) x test split (Future: training simulations at later
times; Domain: held-out simulations). Here each cell is the mean RMSE over ``ok`` seeds with its 95 % t
confidence interval (from ``aggregates.csv``: ``test_metric_*`` is Future, ``test_domain_metric_*`` Domain);
the best mean of each column is marked. Beside it: each row's equivariance error, on exact quarter turns for
the rotation set and on the (approximate) published down-sampling for the scale set. A first, reference row gives
the persistence forecast (every future frame is the last input frame; no model, no seeds), read from the runs'
``reference.csv``: a forecaster that does not beat it has learnt nothing usable about the flow.

Plume tasks are the registered tasks whose class is :class:`relaxbench.tasks.plume.Plume` or a subclass; a
task's symmetry comes from its runs' task parameters (``symmetry``, else the class default). Rows are found by
the model's ``arch`` (a config may name the same architecture twice, e.g. one entry per symmetry). The figures
read each run's ``rollout.csv`` and ``fields.npz`` (:meth:`relaxbench.tasks.plume.Plume.artifacts`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from relaxbench import registry
from relaxbench.records import RunRecord
from relaxbench.report import figures
from relaxbench.tasks.plume import Plume

__all__ = [
    "PERSISTENCE",
    "ROWS",
    "SPLITS",
    "plume_section",
    "plume_tasks",
    "references",
    "rollout_figure",
    "table2",
    "velocity_figure",
]

#: Table 2's rows: label, model ``arch``, method.
ROWS = (
    ("Conv", "conv", "equivariant"),
    ("Equiv", "equiv", "equivariant"),
    ("RPP", "equiv", "rpp"),
    ("Lift", "lift", "equivariant"),
    ("RSteer", "rsteer", "equivariant"),
    ("RSteer + relaxation (the paper)", "rsteer", "relaxed"),
)
#: Test splits: label, aggregate column prefix, split name in ``rollout.csv`` / ``fields.npz``.
SPLITS = (("Future", "test_metric", "test"), ("Domain", "test_domain_metric", "test_domain"))
#: The reference row's label (:func:`references`).
PERSISTENCE = "Persistence (last input frame)"
#: Rows whose evaluated model is only approximately equivariant by design.
APPROXIMATE = {"RPP": "free branch kept", "Lift": "non-equivariant encoder", "RSteer": "relaxed weights"}


def plume_tasks(board: pd.DataFrame, records: Mapping[str, RunRecord]) -> dict[str, str]:
    """``{task: symmetry}`` of the plume tasks in the leaderboard, rotation first."""
    out = {}
    for task in sorted(board["task"].unique()):
        try:
            cls = registry.get_task_class(task)
        except registry.RegistryError:
            continue
        if not issubclass(cls, Plume):
            continue
        params = next((r.run_config.get("task_params", {}) for r in records.values() if r.task == task), {})
        out[task] = params.get("symmetry", cls.defaults["symmetry"])
    return dict(sorted(out.items(), key=lambda item: item[1] != "rotation"))


def _number(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _cell(entry: Mapping[str, Any] | None, prefix: str) -> dict[str, Any] | None:
    if entry is None or _number(entry.get(f"{prefix}_mean")) is None:
        return None
    return {
        "mean": _number(entry[f"{prefix}_mean"]),
        "low": _number(entry.get(f"{prefix}_ci_low")),
        "high": _number(entry.get(f"{prefix}_ci_high")),
        "n": int(entry.get(f"{prefix}_n") or 0),
    }


def references(board: pd.DataFrame, results_dir: Path, tasks: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    """``{task: reference curve}``: the persistence forecast's ``reference.csv`` (columns ``split, step, rmse``)
    of the task's first ok run that wrote one (every run of a task's data has the same), for the tasks that
    have one."""
    out = {}
    for task in tasks:
        runs = board[(board["task"] == task) & (board["status"] == "ok")].sort_values(
            ["model", "method", "seed"]
        )
        path = next(
            (
                results_dir / d / "reference.csv"
                for d in runs["run_dir"]
                if (results_dir / d / "reference.csv").is_file()
            ),
            None,
        )
        if path is not None:
            out[task] = pd.read_csv(path)
    return out


def _reference_row(
    columns: list[dict[str, Any]], curves: Mapping[str, pd.DataFrame]
) -> dict[str, Any] | None:
    """Table 2's persistence row: per column the pooled RMSE of the split, ``sqrt(mean over steps of rmse^2)``
    (each step averages the same examples), no interval (deterministic); ``None`` without any curve."""
    cells = []
    for c in columns:
        curve = curves.get(c["task"])
        split = next(name for label, _, name in SPLITS if label == c["split"])
        values = None if curve is None else curve.loc[curve["split"] == split, "rmse"].to_numpy()
        cells.append(
            None
            if values is None or not len(values)
            else {
                "mean": float(np.sqrt(np.mean(values**2))),
                "low": None,
                "high": None,
                "n": None,
                "best": False,
            }
        )
    if all(c is None for c in cells):
        return None
    return {"label": PERSISTENCE, "model": None, "method": None, "cells": cells, "reference": True}


def table2(
    board: pd.DataFrame,
    agg: pd.DataFrame,
    tasks: Mapping[str, str],
    curves: Mapping[str, pd.DataFrame] | None = None,
) -> dict[str, Any] | None:
    """The Table 2 layout: ``columns`` (symmetry, split, task) and ``rows`` (label, cells with mean, CI
    bounds, n and ``best``; the equivariance error per symmetry), or ``None`` without plume runs. With the
    persistence ``curves`` of :func:`references`, a first ``reference`` row (never marked best)."""
    if not tasks:
        return None
    arch = board.dropna(subset=["arch"]).groupby(["task", "model"])["arch"].first()
    entries: dict[tuple[str, str, str], dict[str, Any]] = {}
    for e in agg.to_dict("records"):
        key = (e["task"], arch.get((e["task"], e["model"]), e["model"]), e["method"])
        entries.setdefault(key, e)
    columns = [
        {"symmetry": symmetry, "split": label, "task": task, "prefix": prefix}
        for task, symmetry in tasks.items()
        for label, prefix, _ in SPLITS
    ]
    rows = []
    for label, model, method in ROWS:
        cells = [_cell(entries.get((c["task"], model, method)), c["prefix"]) for c in columns]
        equivariance = []
        for task, symmetry in tasks.items():
            e = entries.get((task, model, method))
            kind = "exact" if symmetry == "rotation" else "approx"
            equivariance.append(None if e is None else _number(e.get(f"equiv_final_{kind}_mean")))
        if any(c is not None for c in cells):
            rows.append(
                {
                    "label": label,
                    "model": model,
                    "method": method,
                    "cells": cells,
                    "equivariance": equivariance,
                    "approximate": APPROXIMATE.get(label.split(" +")[0]) if method != "relaxed" else None,
                    "reference": False,
                }
            )
    for i in range(len(columns)):
        means = [r["cells"][i]["mean"] for r in rows if r["cells"][i] is not None]
        for r in rows:
            if r["cells"][i] is not None:
                r["cells"][i]["best"] = r["cells"][i]["mean"] == min(means)
    reference = _reference_row(columns, curves or {})
    if reference is not None:
        rows.insert(0, {**reference, "equivariance": [None] * len(tasks), "approximate": None})
    symmetries = [{"symmetry": s, "task": t} for t, s in tasks.items()]
    return {"columns": columns, "rows": rows, "symmetries": symmetries}


def _curves(board: pd.DataFrame, results_dir: Path, task: str) -> pd.DataFrame:
    """Every ok run's ``rollout.csv`` of ``task`` with its row label: columns ``label, seed, split, step, rmse``."""
    labels = {(model, method): label for label, model, method in ROWS}
    frames = []
    for r in board[(board["task"] == task) & (board["status"] == "ok")].itertuples():
        label = labels.get((r.arch, r.method))
        path = results_dir / r.run_dir / "rollout.csv"
        if label is None or not path.is_file():
            continue
        frames.append(pd.read_csv(path).assign(label=label, seed=r.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _row_colors() -> dict[str, tuple]:
    import seaborn as sns

    return dict(zip((label for label, _, _ in ROWS), sns.color_palette("colorblind", len(ROWS))))


def rollout_figure(
    board: pd.DataFrame,
    results_dir: Path,
    tasks: Mapping[str, str],
    path: Path,
    curves: Mapping[str, pd.DataFrame] | None = None,
) -> Path | None:
    """RMSE per rollout step, one panel per symmetry x split: the mean over seeds of every Table 2 row (line)
    and its 95 % t interval (band, from two seeds on); the persistence ``curves`` of :func:`references`
    dashed."""
    from scipy import stats

    data = {task: _curves(board, results_dir, task) for task in tasks}
    if all(d.empty for d in data.values()):
        return None
    colors = _row_colors()
    with figures._style():
        fig, axes = figures._figure(len(tasks), len(SPLITS))
        for i, (task, symmetry) in enumerate(tasks.items()):
            for j, (label, _, split) in enumerate(SPLITS):
                ax = axes[i, j]
                ax.set_title(f"{symmetry}: {label}")
                ax.set_xlabel("rollout step")
                ax.set_ylabel("RMSE")
                reference = (curves or {}).get(task)
                if reference is not None:
                    still = reference[reference["split"] == split]
                    ax.plot(still["step"], still["rmse"], color="0.35", lw=1.5, ls="--")
                runs_of_task = data[task]
                if runs_of_task.empty:
                    continue
                for row, runs in runs_of_task[runs_of_task["split"] == split].groupby("label", sort=False):
                    table = runs.pivot_table(index="step", columns="seed", values="rmse")
                    mean = table.mean(axis=1)
                    ax.plot(mean.index, mean.to_numpy(), color=colors[row], lw=2)
                    if table.shape[1] >= 2:
                        half = (
                            stats.t.ppf(0.975, table.shape[1] - 1)
                            * table.std(axis=1)
                            / np.sqrt(table.shape[1])
                        )
                        ax.fill_between(
                            mean.index, mean - half, mean + half, color=colors[row], alpha=0.2, lw=0
                        )
        present = sorted(
            {r for d in data.values() if not d.empty for r in d["label"]}, key=list(colors).index
        )
        handles = [Line2D([], [], color=colors[r], lw=2, label=r) for r in present]
        if curves:
            handles.append(Line2D([], [], color="0.35", lw=1.5, ls="--", label=PERSISTENCE))
        figures._legend(fig, handles)
        return figures._save(fig, path)


def _example_run(board: pd.DataFrame, task: str, results_dir: Path) -> tuple[str, Any] | None:
    """The run whose fields are drawn: the first ok seed of the first Table 2 row that ran (the paper's row
    first), as ``(row label, leaderboard row)``."""
    runs = board[(board["task"] == task) & (board["status"] == "ok")].sort_values("seed")
    for label, model, method in reversed(ROWS):
        match = runs[(runs["arch"] == model) & (runs["method"] == method)]
        for r in match.itertuples():
            if (results_dir / r.run_dir / "fields.npz").is_file():
                return label, r
    return None


def velocity_figure(
    board: pd.DataFrame, results_dir: Path, task: str, symmetry: str, path: Path
) -> tuple[Path, str] | None:
    """True and predicted velocity fields of one test example per split at the last rollout step (quiver on
    the speed as background), for one run (:func:`_example_run`); returns the path and a caption."""
    found = _example_run(board, task, results_dir)
    if found is None:
        return None
    label, run = found
    with np.load(results_dir / run.run_dir / "fields.npz") as data:
        fields = {k: data[k] for k in data}
    with figures._style():
        fig, axes = figures._figure(len(SPLITS), 2, legend=False)
        for i, (split_label, _, split) in enumerate(SPLITS):
            step = int(fields[f"{split}_steps"][-1])
            true, pred = fields[f"{split}_true"][-1], fields[f"{split}_pred"][-1]
            top = max(float(np.hypot(*true).max()), 1e-12)
            for j, (name, v) in enumerate((("true", true), ("predicted", pred))):
                ax = axes[i, j]
                h, w = v.shape[-2:]
                ax.imshow(np.hypot(*v), cmap="Blues", vmin=0, vmax=top, origin="upper")
                stride = max(1, h // 16)
                ys, xs = np.mgrid[0:h:stride, 0:w:stride]
                # channel 1 points up (towards row 0): with origin="upper" the arrow's y is -v1 on screen
                ax.quiver(
                    xs,
                    ys,
                    v[0, ::stride, ::stride],
                    -v[1, ::stride, ::stride],
                    color="0.15",
                    angles="xy",
                    scale_units="xy",
                    scale=top / stride * 1.2,
                )
                ax.set_title(f"{split_label}, {name}, step {step}")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
        figures._save(fig, path)
    caption = (
        f"{symmetry} set, run {run.model} / {run.method} / seed {run.seed} ({label}): the middle test example of "
        "each split at the last rollout step; arrows are the velocity, the background its magnitude (same scale "
        "in a row's two panels)."
    )
    return path, caption


def plume_section(
    board: pd.DataFrame, agg: pd.DataFrame, records: Mapping[str, RunRecord], results_dir: Path, stage: Path
) -> dict[str, Any] | None:
    """The report's plume section: :func:`table2` plus its figures (paths relative to ``stage``, the site's
    staging folder), or ``None`` when the leaderboard has no plume task."""
    tasks = plume_tasks(board, records)
    still = references(board, results_dir, tasks)
    table = table2(board, agg, tasks, still)
    if table is None:
        return None
    made = []
    rollout = rollout_figure(board, results_dir, tasks, stage / "figures/plume-rollout.png", still)
    if rollout is not None:
        made.append(
            (
                rollout,
                "Rollout error",
                "RMSE of the autoregressive forecast per step, mean over seeds (line) and "
                "95% t interval (band), per Table 2 row, and the persistence forecast (dashed: every future "
                "frame is the last input frame); Future: training simulations at later times, Domain: "
                "held-out simulations.",
            )
        )
    for task, symmetry in tasks.items():
        drawn = velocity_figure(
            board, results_dir, task, symmetry, stage / f"figures/plume-{symmetry}-fields.png"
        )
        if drawn is not None:
            made.append((drawn[0], f"Velocity fields ({symmetry})", drawn[1]))
    table["figures"] = [{"path": p, "title": t, "caption": c} for p, t, c in made]
    return table
