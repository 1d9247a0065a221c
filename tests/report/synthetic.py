"""Synthetic run folders for the leaderboard and report tests: real ``record.json`` (written by
:class:`relaxbench.records.RunRecord`) and ``history.csv`` files with known numbers, no training."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from relaxbench.config import METRIC_VERSION, RunSpec
from relaxbench.records import RunRecord, atomic_write_text
from relaxbench.relax.schedules import Schedule

SCRIPT = '<script>alert("pwned")</script>'
CONFIG_NAME = "synthetic"
#: (task, metric, unit, lower_is_better)
TASKS = {"tetris": ("error_rate", "fraction", True), "toy_acc": ("accuracy", "fraction", False)}


def write_run(
    results_dir: Path,
    run: RunSpec,
    value: float | None,
    status: str = "ok",
    reason: str | None = None,
    epochs: int = 6,
    diverged_epoch: int | None = None,
    family: str = "e3nn",
    note: str = "",
    share_peak: float = 0.05,
) -> Path:
    """One run folder with a record whose primary test metric is ``value`` (``None`` for a run that is not ok).

    A relaxed run's history has two layers' free-branch shares (``share_peak`` and a tenth of it, times theta)
    and the unprojected equivariance error at epochs 1 and 3."""
    metric, unit, lower = TASKS[run.task]
    relaxed = run.method != "equivariant"
    schedule = Schedule("triangle" if relaxed else "none", epochs)
    n_epochs = epochs if diverged_epoch is None else diverged_epoch
    rows = []
    for e in range(n_epochs):
        loss = 1.0 / (e + 1) + 0.01 * run.seed
        rows.append(
            {
                "epoch": e,
                "theta": schedule(e),
                "lr": 1e-3,
                "loss": loss + 0.01,
                "task_loss": loss,
                "lie": 0.02 / (e + 1) if relaxed else 0.0,
                "norm": 0.05 / (e + 1) if relaxed else 0.0,
                "train_seconds": 0.1,
                "val_loss": loss * 1.1,
                f"val_{metric}": 0.5 - 0.05 * e,
            }
        )
        if relaxed:
            theta = schedule(e)
            rows[-1].update(
                {"share:layers.0": share_peak * theta, "share:layers.1": 0.1 * share_peak * theta}
            )
            if e in (1, 3):
                rows[-1].update({"equiv_unprojected_exact": 1e-3 * theta, "equiv_unprojected_approx": None})
    test = {} if value is None else {"loss": 0.3 + value, metric: value}
    train = {} if value is None else {"loss": 0.25, metric: value / 2}
    record = RunRecord(
        task=run.task,
        model=run.model,
        arch="tfn",
        family=family,
        method=run.method,
        seed=run.seed,
        config_name=CONFIG_NAME,
        config_hash=f"hash-{run.model}-{run.method}",
        status=status,
        metric=metric,
        metric_unit=unit,
        lower_is_better=lower,
        reason=reason,
        diverged_epoch=diverged_epoch,
        train=train,
        val=dict(train),
        test=test,
        gen_gap=None if value is None else test["loss"] - train["loss"],
        test_metric_unprojected=value * 0.9 if relaxed and value is not None else None,
        theta_unprojected=0.2 if relaxed and value is not None else None,
        free_share_peak=share_peak * max(r["theta"] for r in rows) if relaxed and rows else None,
        equiv_init_exact=1e-16,
        equiv_init_approx=0.3 if relaxed else 1e-15,
        equiv_final_exact=None if value is None else 0.0,
        equiv_final_approx=None if value is None else 2e-15,
        equiv_dtype="float64",
        params_total=100,
        params_equivariant=80 if relaxed else 100,
        params_free=20 if relaxed else 0,
        epochs_run=n_epochs,
        best_epoch=None if value is None else n_epochs - 1,
        steps=10 * n_epochs,
        wall_time_s=1.5,
        time_per_step_s=0.01,
        eval_time_s=0.2,
        peak_memory_mb=300.0,
        versions={"python": "3.11", "torch": "2.14.1"},
        git_commit="abc123",
        started_at="2025-01-01T00:00:00+00:00",
        run_config={
            "task": run.task,
            "model": run.model,
            "note": note,
            "metric_version": METRIC_VERSION,
            "method_params": {
                "variant": "relaxed" if relaxed else "equivariant",
                "schedule": "triangle" if relaxed else "none",
                "theta_peak": 1.0,
                "lambda_lie": 0.01 if relaxed else 0.0,
                "lambda_norm": 0.01 if relaxed else 0.0,
                "penalty_times_theta": False,
                "free_l2": 0.0,
                "project": True,
                "eps": 1e-8,
            },
        },
    )
    run_dir = run.path(CONFIG_NAME, results_dir.parent)
    atomic_write_text(run_dir / "history.csv", pd.DataFrame(rows).to_csv(index=False))
    record.write(run_dir / "record.json")
    return run_dir


#: test metric per (task, model, method) and seed; None marks the run that is not ok
VALUES = {
    ("tetris", "tfn", "equivariant"): [0.30, 0.20, 0.25],
    ("tetris", "tfn", "relaxed"): [0.20, 0.19, None],
    ("tetris", "vn", "equivariant"): [0.50, 0.52, 0.51],
    ("tetris", "vn", "relaxed"): [None, 0.45, 0.47],
    ("toy_acc", "tfn", "equivariant"): [0.80, 0.82, 0.81],
    ("toy_acc", "tfn", "relaxed"): [0.90, 0.91, 0.89],
}


def write_standard_runs(results_dir: Path) -> list[RunSpec]:
    """Two tasks (lower- and higher-is-better), two models, equivariant and relaxed, three seeds; one
    diverged run (``tetris/tfn/relaxed/seed2``) and one failed run whose reason is a script tag
    (``tetris/vn/relaxed/seed0``). Returns the grid."""
    grid = []
    for (task, model, method), values in VALUES.items():
        for seed, value in enumerate(values):
            run = RunSpec(task, model, method, seed)
            grid.append(run)
            if value is not None:
                write_run(results_dir, run, value, note=SCRIPT, share_peak=0.004 if model == "vn" else 0.05)
            elif model == "tfn":
                write_run(
                    results_dir,
                    run,
                    None,
                    "diverged",
                    "non-finite training loss (nan) at epoch 3, step 2",
                    diverged_epoch=3,
                )
            else:
                write_run(results_dir, run, None, "failed", f"RuntimeError: {SCRIPT}")
    return grid


def collect_standard_runs(results_dir: Path) -> None:
    """:func:`write_standard_runs` collected against its own grid (the synthetic records carry no real
    ``config_hash`` and two of their tasks and models are no built-ins, so ``relaxbench collect`` with a config
    would list them all as stale)."""
    from relaxbench.leaderboard import aggregate, collect, write_tables

    board = collect(results_dir, write_standard_runs(results_dir))
    write_tables(results_dir, board, aggregate(board))
