"""Command line: ``relaxbench data | train | collect | report | list | cluster-check``.

Every subcommand takes ``--config``; bad input (unknown keys, names, values) exits with status 2 and one
line naming the problem, before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from relaxbench import __version__, layout, registry
from relaxbench.config import (
    ConfigError,
    data_key,
    expand_runs,
    grid_hashes,
    load_config,
    resolve_run,
)
from relaxbench.errors import UserError, one_line
from relaxbench.methods import METHODS
from relaxbench.threads import limit_threads

__all__ = ["main"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def data_dir_for(cfg: dict, task: str, results: str | Path, key: str | None = None) -> Path:
    """A task's cached data (:func:`relaxbench.layout.data_dir`), for the config's parameters by default or
    for the swept parameter set of data key ``key``."""
    return layout.data_dir(layout.results_dir(cfg["name"], results), task, key or data_key(cfg, task))


def task_parameter_sets(cfg: dict, task: str) -> dict[str, dict]:
    """Every parameter set of ``task`` the config's runs use (swept cells may use several), by data key."""
    sets = {data_key(cfg, task): dict(cfg["tasks"].get(task, {}))}
    for run in expand_runs(cfg):
        if run.task == task and run.axes:
            resolved = resolve_run(cfg, run)
            sets[resolved["data_key"]] = resolved["task_params"]
    return sets


def cmd_data(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.task not in {r.task for r in expand_runs(cfg)} | set(cfg["tasks"]):
        raise ConfigError(
            f"task {args.task!r} is not used by {args.config}; choices: "
            f"{sorted({r.task for r in expand_runs(cfg)})}"
        )
    sets = task_parameter_sets(cfg, args.task)
    key = args.key or data_key(cfg, args.task)
    if key not in sets:
        raise ConfigError(f"--key {key!r}: no run of {args.task!r} uses it; choices: {sorted(sets)}")
    out = Path(args.out) if args.out else data_dir_for(cfg, args.task, args.results, key)
    task = registry.get_task_class(args.task)(sets[key], out)
    if task.prepared() and not args.force:
        print(f"{out}: cached")
        return 0
    task.prepare()
    print(f"{out}: prepared")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    grid = expand_runs(cfg)
    wanted = (args.task, args.model, args.method, args.seed)
    run = next((r for r in grid if (r.task, r.folder, r.method, r.seed) == wanted), None)
    if run is None:
        raise ConfigError(
            f"run {args.task}/{args.model}/{args.method}/seed{args.seed} is not in {args.config}; "
            f"tasks {sorted({r.task for r in grid})}, models {sorted({r.folder for r in grid})}, "
            f"methods {sorted({r.method for r in grid})}, seeds {sorted({r.seed for r in grid})}"
        )
    resolved = resolve_run(cfg, run)
    run_dir = Path(args.out) if args.out else run.path(cfg["name"], args.results)
    data_dir = (
        Path(args.data_dir)
        if args.data_dir
        else data_dir_for(cfg, args.task, args.results, resolved["data_key"])
    )
    limit_threads(args.threads or cfg["threads"])
    from relaxbench.train import train_run

    record = train_run(resolved, run_dir, data_dir, quiet=args.quiet, resume=args.resume)
    value = record.test.get(record.metric)
    print(
        f"{run_dir}: {record.status}"
        + (f", test {record.metric} = {value:.6g}" if value is not None else "")
        + (f" ({record.reason})" if record.reason else "")
    )
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    from relaxbench.leaderboard import aggregate, collect, write_tables

    results = layout.results_dir(cfg["name"], args.results)
    board = collect(results, expected=grid_hashes(cfg))
    paths = write_tables(results, board, aggregate(board, **cfg["statistics"]))
    counts = ", ".join(f"{n} {s}" for s, n in board["status"].value_counts().items())
    print(f"{paths[0]}: {len(board)} runs ({counts}); {paths[1]}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    from relaxbench.report import build_report

    results, reports = (
        layout.results_dir(cfg["name"], args.results),
        layout.report_dir(cfg["name"], args.reports),
    )
    print(build_report(results, reports, cfg))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.config:
        cfg = load_config(args.config)
        for run in expand_runs(cfg):
            print(f"{run.task}\t{run.folder}\t{run.method}\tseed{run.seed}")
        return 0
    print("tasks:   " + " ".join(registry.task_names()))
    print("models:  " + " ".join(registry.model_names()))
    print("methods: " + " ".join(sorted(METHODS)))
    return 0


def cmd_cluster_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    from relaxbench.cluster import preflight
    from relaxbench.job_requests import job_requests, load_profiles, plugin_settings

    profile = load_profiles(args.profile)
    lines, ok = preflight(job_requests(profile, cfg), plugin_settings(profile))
    print("\n".join(lines))
    return 0 if ok else 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relaxbench", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"relaxbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_: str, results: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        if results:  # the subcommands that read or write the results folder
            p.add_argument("--results", default=layout.RESULTS, help="results root (default: results)")
        return p

    p = add("data", cmd_data, "generate or convert one task's data into the cache")
    p.add_argument("--config", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--out", help="data folder (default: results/<config>/data/<task>/<key>)")
    p.add_argument(
        "--key",
        help="data key of a swept task parameter set (default: the config's 'tasks' entry; "
        "results/<config>/data/<task>/<key>)",
    )
    p.add_argument("--force", action="store_true", help="regenerate even if cached")

    p = add("train", cmd_train, "train one run (task x model x method x seed) and write its record")
    p.add_argument("--config", required=True)
    p.add_argument("--task", required=True)
    p.add_argument(
        "--model",
        required=True,
        help="model entry, or a swept cell's run folder '<model>+<axis>=<value>+...' (relaxbench list --config)",
    )
    p.add_argument("--method", required=True)
    p.add_argument("--seed", required=True, type=_non_negative)
    p.add_argument(
        "--out", help="run folder (default: results/<config>/runs/<task>/<model folder>/<method>/seed<k>)"
    )
    p.add_argument("--data-dir", help="the task's data folder (default: the config's cache)")
    p.add_argument(
        "--threads",
        type=_positive,
        help="threads for torch and numpy's BLAS (default: the config's 'threads')",
    )
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add(
        "collect",
        cmd_collect,
        "gather every run record into results/<config>/leaderboard.csv and aggregates.csv",
    )
    p.add_argument("--config", required=True)

    p = add(
        "report", cmd_report, "render the static HTML report reports/<config>/index.html from the leaderboard"
    )
    p.add_argument("--config", required=True)
    p.add_argument("--reports", default=layout.REPORTS, help="reports root (default: reports)")

    p = add(
        "cluster-check",
        cmd_cluster_check,
        "before submitting to SLURM: say which job requests no node can satisfy, and whether job states and "
        "accounts will work (exit 2 when a job could never start)",
        results=False,
    )
    p.add_argument("--config", required=True)
    p.add_argument(
        "--profile",
        action="append",
        required=True,
        help="Snakemake profile folder or file, as given to snakemake (repeat for a site file; later wins)",
    )

    p = add("list", cmd_list, "list tasks, models and methods, or a config's runs", results=False)
    p.add_argument("--config")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        return args.func(args)
    except (UserError, FileNotFoundError) as err:
        print(f"relaxbench: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
