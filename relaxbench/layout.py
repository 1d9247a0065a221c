"""Where relaxbench writes: the results and reports layout, and what may become a folder name.

Everything relaxbench writes lies below a config's results folder ``<results>/<name>/`` or its report folder
``<reports>/<name>/`` (``results`` and ``reports`` relative to the working directory by default):

    <results>/<name>/data/<task>/<key>/                         a task's cached data (DONE.json last)
    <results>/<name>/runs/<task>/<model>/<method>/seed<k>/      one run (record.json last)
    <results>/<name>/leaderboard.csv, aggregates.csv            the tables of ``relaxbench collect``
    <results>/<name>/logs/, benchmarks/                         the workflow's logs and job measurements
    <reports>/<name>/index.html, figures/, runs/                the HTML report

This module is the only place that spells these paths: the command line, the leaderboard, the report and the
Snakemake rules (through the ``*_PATTERN`` strings, whose ``{...}`` are Snakemake wildcards) all ask it.

Every value that becomes one path component (a config's ``name``, model keys, task and method names, sweep
values) goes through :func:`path_component`, which admits 1 to :data:`MAX_COMPONENT` characters of
``A-Z a-z 0-9 _ . = + -``, not starting with ``.`` or ``-``: no ``.`` / ``..``, separators, control or
invisible characters, look-alike letters or shell metacharacters can reach a path or a job's command line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from relaxbench.errors import UserError, shown

__all__ = [
    "AGGREGATES_CSV",
    "COMPONENT_RULE",
    "DATA",
    "LEADERBOARD_CSV",
    "MAX_COMPONENT",
    "PathComponentError",
    "REPORTS",
    "REPORT_DONE",
    "RESULTS",
    "RUN",
    "RunKey",
    "data_dir",
    "path_component",
    "record_paths",
    "report_dir",
    "results_dir",
    "run_dir",
    "snakemake_pattern",
]

RESULTS = "results"
REPORTS = "reports"
#: Below ``<results>/<name>/``: one run's folder and one task's data folder (``str.format`` templates whose
#: fields are also the workflow's wildcard names).
RUN = "runs/{task}/{model}/{method}/seed{seed}"
DATA = "data/{task}/{key}"
DATA_LOG = "logs/data/{task}-{key}.log"
DATA_BENCHMARK = "benchmarks/data/{task}-{key}.tsv"
RUN_LOG = "logs/train/{task}/{model}/{method}/seed{seed}.log"
RUN_BENCHMARK = "benchmarks/train/{task}/{model}/{method}/seed{seed}.tsv"
LEADERBOARD_CSV = "leaderboard.csv"
AGGREGATES_CSV = "aggregates.csv"
RECORD = "record.json"
#: The report rule's completion marker: the report folder is an ``update()`` output that Snakemake keeps when the
#: rule fails (so the old report survives) and then takes for current; this plain output is missing after a
#: failure, so the next run rebuilds the report.
REPORT_DONE = "logs/report.done"

MAX_COMPONENT = 64
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+-]*")
COMPONENT_RULE = f"1-{MAX_COMPONENT} characters of A-Z a-z 0-9 _ . = + -, not starting with '.' or '-'"


class PathComponentError(UserError):
    """A value that would become a folder name but is not a safe one (the message names the key)."""


class RunKey(Protocol):
    """What locates a run: a :class:`relaxbench.config.RunSpec` or anything with the same four fields (and,
    for a swept cell, ``folder``: the model's run folder ``<model>+<label>``, used instead of ``model``)."""

    task: str
    model: str
    method: str
    seed: int


def path_component(value: object, key: str) -> str:
    """``value`` as one folder name, or :class:`PathComponentError` naming ``key`` and the rule.

    Strings, integers and finite floats are accepted (``str(value)`` must follow :data:`COMPONENT_RULE`);
    anything else (``None``, booleans, containers) is refused. Call it for every value that becomes a
    directory or file name.
    """
    text = value if isinstance(value, str) else str(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, (str, int, float))
        or (isinstance(value, float) and not math.isfinite(value))
        or len(text) > MAX_COMPONENT
        or not _COMPONENT.fullmatch(text)
    ):
        where = shown(key)[1:-1]
        raise PathComponentError(f"at '{where}': {shown(value)} cannot be a folder name ({COMPONENT_RULE})")
    return text


def results_dir(name: str, root: str | Path = RESULTS) -> Path:
    """``<root>/<name>``: a config's results folder."""
    return Path(root) / path_component(name, "name")


def report_dir(name: str, root: str | Path = REPORTS) -> Path:
    """``<root>/<name>``: a config's report folder."""
    return Path(root) / path_component(name, "name")


def run_dir(results: str | Path, run: RunKey) -> Path:
    """``<results>/runs/<task>/<model>/<method>/seed<k>`` below a config's results folder ``results``."""
    return Path(results) / RUN.format(
        task=path_component(run.task, "task"),
        model=path_component(getattr(run, "folder", run.model), "model"),
        method=path_component(run.method, "method"),
        seed=path_component(int(run.seed), "seed"),
    )


def data_dir(results: str | Path, task: str, key: str) -> Path:
    """``<results>/data/<task>/<key>`` below a config's results folder ``results``."""
    return Path(results) / DATA.format(task=path_component(task, "task"), key=path_component(key, "key"))


def record_paths(results: str | Path) -> Iterator[Path]:
    """Every ``record.json`` on disk in a run folder below ``results`` (whatever the config says), sorted."""
    pattern = RUN.format(task="*", model="*", method="*", seed="*") + "/" + RECORD
    return iter(sorted(Path(results).glob(pattern)))


def snakemake_pattern(template: str, filename: str = "") -> str:
    """``results/{name}/<template>[/<filename>]``: a layout template as a Snakemake input/output pattern."""
    return "/".join(part for part in (RESULTS, "{name}", template, filename) if part)
