"""The static HTML report of one config: ``reports/<name>/index.html``, ``figures/*.png``, ``runs/*.html``.

Built from ``leaderboard.csv`` and ``aggregates.csv`` (written by ``relaxbench collect``) and, for the run
pages and learning curves, each run's ``record.json`` and ``history.csv``. Jinja2 renders with autoescaping
on, so every string from a config or a record reaches the page HTML-escaped; the CSS and the small sorting
script are the package's own files, inlined, so the site opens from the file system with no network. The
site is built in a staging folder beside the output folder and swapped into place in one step
(:func:`relaxbench.records.atomic_replace_dir`): an interrupted build leaves the old report as it was.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from relaxbench.config import model_cells
from relaxbench.leaderboard import (
    ALPHA,
    BASELINE,
    CONFIDENCE,
    INACTIVE_SHARE,
    WILCOXON_MIN_PAIRS,
    read_tables,
)
from relaxbench.methods import METHODS
from relaxbench.ranking import rank_methods, verdict_counts
from relaxbench.records import (
    LeaderboardError,
    RunRecord,
    atomic_replace_dir,
    follow_umask,
    read_record,
)
from relaxbench.report import figures, plume
from relaxbench.verdicts import EFFECT, POWER, VERDICTS

__all__ = ["build_report"]

STATIC = Path(__file__).with_name("static")


def slug(*parts: Any) -> str:
    """A file-name-safe name for ``parts``; names that had to change get a short hash (so they stay unique)."""
    raw = "--".join(str(p) for p in parts)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", raw).strip("._") or "x"
    if safe != raw:
        safe += "-" + hashlib.sha1(raw.encode()).hexdigest()[:8]
    return safe


def _missing(value: Any) -> bool:
    """None, NaN or pandas' NA (scalars only)."""
    return value is None or (not isinstance(value, (str, bytes, dict, list)) and bool(pd.isna(value)))


def fmt_num(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; missing -> an en dash, infinities -> the infinity sign."""
    if _missing(value):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e6):
        return f"{int(value)}"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def fmt_p(value: Any) -> str:
    """A p-value: three significant digits, ``< 1e-4`` below that."""
    if _missing(value):
        return "–"
    return "< 1e-4" if value < 1e-4 else f"{value:.3g}"


def sort_key(value: Any) -> str:
    """The ``data-v`` attribute the sorting script reads: a plain number, or empty (sorted last)."""
    if _missing(value):
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "Infinity" if value == math.inf else "-Infinity" if value == -math.inf else repr(value)
    return str(value)


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("relaxbench.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=fmt_num, pval=fmt_p, sortkey=sort_key)
    env.globals.update(
        css=Markup((STATIC / "report.css").read_text()),
        js=Markup((STATIC / "report.js").read_text()),
        alpha=ALPHA,
        confidence=CONFIDENCE,
        baseline=BASELINE,
        wilcoxon_min=WILCOXON_MIN_PAIRS,
        inactive_share=INACTIVE_SHARE,
    )
    return env


def _read_history(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def _nan_to_none(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: None if _missing(v) else v for k, v in row.items()}


def _run_context(row: Mapping[str, Any], record: RunRecord, history: pd.DataFrame) -> dict[str, Any]:
    data = asdict(record)
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    return {
        "row": row,
        "record": scalars,
        "anchor": f"task-{slug(record.task)}",
        "splits": {split: data[split] for split in ("train", "val", "test")},
        "metric_names": list(dict.fromkeys(k for split in ("train", "val", "test") for k in data[split])),
        "versions": record.versions,
        "dual": record.dual,
        "config_json": json.dumps(record.run_config, indent=2, sort_keys=True, default=str),
        "record_json": record.to_json(),
        "history_columns": list(history.columns),
        "history_rows": history.to_dict("records"),
    }


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height in pixels from a PNG's header (its IHDR chunk)."""
    return struct.unpack(">II", path.read_bytes()[16:24])


def _provenance(board: pd.DataFrame) -> dict[str, Any]:
    ran = board[board["status"] != "missing"]
    version_cols = [c for c in board if c.startswith("version_")]
    combos = (
        ran.fillna({c: "?" for c in version_cols}).groupby(version_cols, dropna=False).size()
        if version_cols
        else pd.Series(dtype=int)
    )
    versions = [
        {
            "versions": dict(
                zip(
                    [c.removeprefix("version_") for c in version_cols],
                    key if isinstance(key, tuple) else (key,),
                )
            ),
            "runs": int(n),
        }
        for key, n in combos.items()
    ]
    started = ran["started_at"].dropna().astype(str)
    return {
        "versions": versions,
        "commits": ran["git_commit"].fillna("unknown").value_counts().to_dict(),
        "devices": ran["device"].fillna("unknown").value_counts().to_dict(),
        "threads": ran["threads"].dropna().astype(int).value_counts().to_dict(),
        "config_hashes": int(ran["config_hash"].nunique()),
        "first_start": started.min() if len(started) else None,
        "last_start": started.max() if len(started) else None,
        "wall_time_h": float(ran["wall_time_s"].sum()) / 3600,
    }


def _methods_used(records: Mapping[str, RunRecord]) -> list[dict[str, Any]]:
    """Each method's parameters as the runs applied them (``run_config['method_params']``), with the models
    that ran it so; a method appears once per distinct parameter set (``unconstrained`` may differ by model)."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records.values():
        params = record.run_config.get("method_params", {})
        entry = seen.setdefault(
            (record.method, json.dumps(params, sort_keys=True, default=str)),
            {"name": record.method, "params": params, "models": set()},
        )
        entry["models"].add(record.model)
    return [{**e, "models": sorted(e["models"])} for _, e in sorted(seen.items())]


def _summary(agg: pd.DataFrame) -> dict[str, Any]:
    """The report's first screen: one row per task x model (x swept cell), one column per method other than
    the baseline, each cell that comparison's verdict, difference and CI and power (``None`` where the model
    did not run the method); and how many comparisons had the power to see the stated effect."""
    prefix = f"test_metric_vs_{BASELINE}"
    compared = agg[(agg["method"] != BASELINE) & agg[f"{prefix}_verdict"].notna()]
    order = list(METHODS) + sorted(set(compared["method"]) - set(METHODS))
    methods = sorted(compared["method"].unique(), key=order.index)
    rows = []
    for (task, model, sweep), entries in compared.groupby(["task", "model", "sweep"], sort=True):
        by_method = {e["method"]: _nan_to_none(e) for e in entries.to_dict("records")}
        first = next(iter(by_method.values()))
        rows.append(
            {
                "task": task,
                "model": model,
                "sweep": sweep,
                "anchor": f"task-{slug(task)}",
                "metric": first["metric"],
                "unit": first["metric_unit"],
                "lower_is_better": first["lower_is_better"] in (None, True),
                "cells": [by_method.get(m) for m in methods],
            }
        )
    verdicts = compared[f"{prefix}_verdict"].value_counts().to_dict()
    return {
        "methods": methods,
        "rows": rows,
        "n_comparisons": len(compared),
        "n_powered": int(compared[f"{prefix}_powered"].astype(bool).sum()),
        "verdicts": {v: int(verdicts.get(v, 0)) for v in VERDICTS},
    }


def _sweep_figures(
    agg: pd.DataFrame, config: Mapping[str, Any] | None, task: str, stage: Path
) -> list[tuple[Path | None, str, str]]:
    """A figure per sweep of every swept model entry on ``task`` (:func:`figures.sweep_figure`), its cells
    found from the config (none without one)."""
    made = []
    for key, model in (config or {}).get("models", {}).items():
        if task not in model["tasks"] or not model.get("sweeps"):
            continue
        cells = model_cells(config, key, task)
        for index, sweep in enumerate(model["sweeps"]):
            names = [n for n in sweep if n.partition(".")[0] in ("params", "training", task)]
            labels = {cell.label for cell in cells if index in cell.sweeps}
            entries = agg[(agg["task"] == task) & (agg["model"] == key) & agg["sweep"].isin(labels)]
            if not names or not set(names) <= set(entries.columns):
                continue
            path = stage / f"figures/{slug(task, key, f'sweep{index}')}.png"
            made.append(
                (
                    figures.sweep_figure(entries, names[0], names[1:], BASELINE, path),
                    f"{key}: test metric against {names[0]}",
                    f"Sweep {index + 1} of {key} ({', '.join(names)}; other settings at the entry's base). "
                    f"Top: mean test metric per method with its {CONFIDENCE:.0%} t confidence band; bottom: "
                    f"the difference method − {BASELINE} paired by seed, with its {CONFIDENCE:.0%} band "
                    "(below the dashed zero line is lower).",
                )
            )
    return made


def _ranking_context(agg: pd.DataFrame, stage: Path) -> dict[str, Any]:
    """The ranking section: :func:`relaxbench.ranking.rank_methods`, its CD diagram, the verdict counts."""
    ranking = rank_methods(agg)
    path = figures.critical_difference_diagram(ranking, stage / "figures/methods-cd.png")
    counts = verdict_counts(agg)
    cd = None
    if path is not None:
        cd = {"src": path.relative_to(stage).as_posix(), **dict(zip(("width", "height"), _png_size(path)))}
    return {
        "ranking": ranking,
        "cd_figure": cd,
        "verdict_names": list(VERDICTS),
        "verdicts": {m: {v: int(n) for v, n in row.items()} for m, row in counts.iterrows()},
    }


def _task_sections(
    board: pd.DataFrame,
    agg: pd.DataFrame,
    histories: Mapping[str, pd.DataFrame],
    pages: Mapping[str, str],
    stage: Path,
    config: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One section per task. Its learning-curve, penalty, spread and equivariance figures show each model's
    base cell (a swept entry's other cells have their sweep figures)."""
    sections = []
    for task, runs in board.groupby("task", sort=True):
        entries = agg[agg["task"] == task].sort_values(
            ["rank", "model", "sweep", "method"], na_position="last"
        )
        meta = _nan_to_none(entries.iloc[0])  # NaN: no run has a record
        name = slug(task)
        base_runs, base_entries = runs[runs["sweep"] == ""], entries[entries["sweep"] == ""]
        made = _sweep_figures(agg, config, task, stage) + [
            (
                figures.learning_curves(base_runs, histories, stage / f"figures/{name}-learning.png"),
                "Learning curves",
                "Training task loss (log axis) and validation metric per epoch; thin lines are "
                "single runs (a cross marks where a run diverged or failed), thick lines the mean over ok runs; "
                "dashed lines are theta (right axis).",
            ),
            (
                figures.penalty_curves(base_runs, histories, stage / f"figures/{name}-penalties.png"),
                "Relaxation penalties",
                "The regulariser's two terms per epoch, before weighting by lambda (log "
                "axis): the Lie-derivative term and the free branch's activation-norm term, summed over relaxed "
                "layers.",
            ),
            (
                figures.spread_figure(base_runs, base_entries, stage / f"figures/{name}-spread.png"),
                "Test metric and generalization gap",
                f"One dot per ok seed; black: mean and {CONFIDENCE:.0%} "
                "t confidence interval. Generalization gap = test loss − train loss of the evaluated model.",
            ),
            (
                figures.equivariance_figure(base_runs, stage / f"figures/{name}-equivariance.png"),
                "Equivariance error",
                "Relative equivariance error mean_x max_g ||f(gx) − g f(x)|| / s (s: RMS of the output's "
                "input-dependent part, see Methods) of "
                "the evaluated model at initialisation and at the end (log axis), exact and approximate symmetries "
                f"apart; values below {figures.EQUIV_FLOOR:g} (exact zeros included) sit on the dotted line.",
            ),
        ]
        sections.append(
            {
                "task": task,
                "anchor": f"task-{name}",
                "metric": meta["metric"] or "metric",
                "unit": meta["metric_unit"] or "?",
                "lower_is_better": meta["lower_is_better"] in (None, True),
                "entries": [_nan_to_none(e) for e in entries.to_dict("records")],
                "runs": [
                    {**_nan_to_none(r), "page": pages.get(r["run_dir"])} for r in runs.to_dict("records")
                ],
                "figures": [_figure_entry(p, t, c, stage) for p, t, c in made if p is not None],
            }
        )
    return sections


def _figure_entry(path: Path, title: str, caption: str, stage: Path) -> dict[str, Any]:
    """A figure as the templates draw it: source relative to the site, title, caption, size in pixels."""
    size = dict(zip(("width", "height"), _png_size(path)))
    return {"src": path.relative_to(stage).as_posix(), "title": title, "caption": caption, **size}


def _figure_entries(section: dict[str, Any] | None, stage: Path) -> dict[str, Any] | None:
    """The plume section with its ``figures`` (``path``, ``title``, ``caption``) as :func:`_figure_entry`."""
    if section is not None:
        section["figures"] = [
            _figure_entry(f["path"], f["title"], f["caption"], stage) for f in section["figures"]
        ]
    return section


#: What relaxbench writes into a report folder; anything else there is refused rather than thrown away.
OWN_ENTRIES = ("index.html", "figures", "runs")
#: The marker Snakemake writes into a finished ``directory()`` output (the report rule's); it carries no content
#: and Snakemake writes it again when the rebuilt report's job ends.
SNAKEMAKE_MARKER = ".snakemake_timestamp"


def _check_own(out_dir: Path) -> None:
    """:class:`LeaderboardError` if ``out_dir`` holds entries neither relaxbench nor Snakemake wrote: publishing
    replaces the whole folder."""
    known = (*OWN_ENTRIES, SNAKEMAKE_MARKER)
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in known) if out_dir.is_dir() else []
    if foreign:
        shown = foreign[:5] + (["..."] if len(foreign) > 5 else [])
        raise LeaderboardError(
            f"{out_dir} holds {len(foreign)} entries relaxbench did not write ({', '.join(map(repr, shown))}); "
            "the report replaces this folder as a whole: move them elsewhere"
        )


def _stage(out_dir: Path) -> Path:
    """A new, empty staging folder beside ``out_dir`` (``.<name>.build-*``, same file system), with the
    permissions the umask gives; staging folders a killed build left behind are removed first."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for old in out_dir.parent.glob(f".{out_dir.name}.build-*"):
        shutil.rmtree(old, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
    follow_umask(stage, directory=True)
    return stage


def build_report(
    results_dir: str | Path, out_dir: str | Path, config: Mapping[str, Any] | None = None
) -> Path:
    """Render the site of ``results_dir`` (``results/<name>``) into ``out_dir`` (``reports/<name>``).

    Args:
        results_dir: a config's results folder with ``leaderboard.csv``, ``aggregates.csv`` and ``runs/``.
        out_dir: the site's folder (``index.html``, ``figures/``, ``runs/``), replaced as a whole; other entries
            in it are refused (:class:`LeaderboardError`), never deleted.
        config: the validated config (shown on the overview: name, description, full settings).

    Returns:
        The path of ``index.html``.
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    everything, agg = read_tables(results_dir)
    board = everything[everything["status"] != "stale"]
    records = {
        r: read_record(results_dir / r / "record.json")
        for r in board.loc[board["status"] != "missing", "run_dir"]
    }
    histories = {r: _read_history(results_dir / r / "history.csv") for r in records}
    _check_own(out_dir)
    stage = _stage(out_dir)
    try:
        env = _environment()
        generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
        pages = {}
        (stage / "runs").mkdir()
        for row in board.to_dict("records"):
            if row["run_dir"] not in records:
                continue
            cell = [row["model"], *filter(None, [row["sweep"]])]
            name = slug(row["task"], *cell, row["method"], "seed" + str(row["seed"]))
            page = f"runs/{name}.html"
            pages[row["run_dir"]] = page
            history = histories[row["run_dir"]]
            context = _run_context(_nan_to_none(row), records[row["run_dir"]], history)
            activity = figures.activity_figure(
                history, INACTIVE_SHARE, stage / f"figures/run-{name}-activity.png"
            )
            (stage / page).write_text(
                env.get_template("run.html").render(
                    **context,
                    activity=None
                    if activity is None
                    else {
                        "src": "../" + activity.relative_to(stage).as_posix(),
                        **dict(zip(("width", "height"), _png_size(activity))),
                    },
                    root="../",
                    generated=generated,
                    title=f"{row['task']} / {' @ '.join(cell)} / {row['method']} / seed {row['seed']}",
                ),
                encoding="utf-8",
            )
        counts = everything["status"].value_counts().to_dict()
        index = env.get_template("index.html").render(
            root="",
            generated=generated,
            config=config or {},
            title=f"relaxbench report: {(config or {}).get('name', results_dir.name)}",
            config_json=json.dumps(config, indent=2, sort_keys=True, default=str) if config else None,
            counts=counts,
            n_runs=len(everything),
            stale=[_nan_to_none(r) for r in everything[everything["status"] == "stale"].to_dict("records")],
            summary=_summary(agg),
            effect=(config or {}).get("statistics", {}).get("effect", EFFECT),
            power=(config or {}).get("statistics", {}).get("power", POWER),
            sections=_task_sections(board, agg, histories, pages, stage, config),
            plume=_figure_entries(plume.plume_section(board, agg, records, results_dir, stage), stage),
            provenance=_provenance(board),
            methods=_methods_used(records),
            **_ranking_context(agg, stage),
        )
        (stage / "index.html").write_text(index, encoding="utf-8")
        atomic_replace_dir(stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out_dir / "index.html"
