"""The suite's own costs, from a real workflow run: wall time, parallel speed-up, overhead, evaluation, memory.

Times a dry run, then runs ``snakemake`` on a config once per ``--cores`` value, each in a fresh working
directory (so nothing is cached between them), and reads Snakemake's per-job benchmark files and the run records:

- wall time per ``--cores`` and the speed-up of the largest over ``--cores 1``;
- (when ``--cores 1`` is among them) overhead = wall time at ``--cores 1`` minus the sum of the training jobs'
  times, as a share of the wall time (it contains Snakemake itself, the data jobs, collect and report), split
  into those parts, next to the start-up floor of one job process (``python -m relaxbench --version``:
  Python, torch and the CLI);
- the equivariance-error evaluation's cost relative to one training epoch (``eval_time_s`` of the record
  against the mean ``train_seconds`` of its history), as the median per model and over models (a model with
  many methods, such as the ablations' tfn, would otherwise dominate a median over runs);
- peak resident memory per training job (Snakemake's ``max_rss``).

    python benchmarks/bench_workflow.py --config configs/smoke.yaml --cores 1 2
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def run_workflow(config: Path, cores: int, workdir: Path, dry_run: bool = False) -> float:
    """Wall seconds of one complete ``snakemake`` run of ``config`` in ``workdir`` (or of its dry run: parsing
    the Snakefile, checking the config and building the DAG)."""
    cmd = [
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config.resolve()),
        "--cores",
        str(cores),
        "--workflow-profile",
        str(REPO / "workflow/profiles/default"),
        "--quiet",
        *(["--dry-run"] if dry_run else []),
        "all",
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def startup_seconds(repeats: int = 3) -> float:
    """Median wall seconds of ``python -m relaxbench --version``: what every job process pays before working."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "relaxbench", "--version"], check=True, stdout=subprocess.DEVNULL
        )
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def other_jobs(results: Path) -> dict[str, tuple[int, float]]:
    """``{stage: (jobs, seconds)}`` of the jobs that are not training (data, collect, report)."""
    stages: dict[str, tuple[int, float]] = {}
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        stage = tsv.relative_to(results / "benchmarks").parts[0].removesuffix(".tsv")
        if stage != "train":
            n, s = stages.get(stage, (0, 0.0))
            stages[stage] = (n + 1, s + float(pd.read_csv(tsv, sep="\t")["s"].iloc[0]))
    return stages


def job_table(results: Path) -> pd.DataFrame:
    """One row per training job: Snakemake's seconds and max RSS, the record's eval cost against an epoch."""
    rows = []
    for tsv in sorted((results / "benchmarks" / "train").rglob("*.tsv")):
        rel = tsv.relative_to(results / "benchmarks" / "train").with_suffix("")
        bench = pd.read_csv(tsv, sep="\t").iloc[0]
        run = results / "runs" / rel.parent / rel.name
        record = pd.read_json(run / "record.json", typ="series")
        history = pd.read_csv(run / "history.csv")
        epoch = history["train_seconds"].mean() if len(history) else float("nan")
        rows.append(
            {
                "run": str(rel),
                "job_s": bench["s"],
                "max_rss_mb": bench["max_rss"],
                "epoch_s": epoch,
                "eval_s": record["eval_time_s"],
                "eval_over_epoch": (record["eval_time_s"] or float("nan")) / epoch,
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs/smoke.yaml")
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--keep", type=Path, help="copy the last run's results folder here")
    args = parser.parse_args(argv)
    name = yaml.safe_load(args.config.read_text())["name"]
    print(f"# {' '.join(['python', *sys.argv])}")
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"dry run (parse the Snakefile, check the config, build the DAG): "
            f"{run_workflow(args.config, 1, Path(tmp), dry_run=True):.1f} s"
        )
    walls, jobs, others = {}, None, {}
    for cores in sorted(args.cores):
        with tempfile.TemporaryDirectory() as tmp:
            walls[cores] = run_workflow(args.config, cores, Path(tmp))
            table = job_table(Path(tmp) / "results" / name)
            if cores == min(args.cores):
                jobs, others = table, other_jobs(Path(tmp) / "results" / name)
            if args.keep:
                shutil.copytree(Path(tmp) / "results" / name, args.keep / f"cores{cores}", dirs_exist_ok=True)
        print(f"--cores {cores}: wall {walls[cores]:.1f} s, {len(table)} training jobs")
    low, high = min(walls), max(walls)
    if high != low:
        print(f"speed-up --cores {high} over --cores {low}: {walls[low] / walls[high]:.2f}x")
    if low == 1:  # jobs run one after another: the wall time splits into the jobs' times and Snakemake's
        train = jobs["job_s"].sum()
        print(
            f"--cores 1: training jobs {train:.1f} s of {walls[low]:.1f} s wall; everything else "
            f"(Snakemake, data, collect, report) {100 * (walls[low] - train) / walls[low]:.1f}%"
        )
        snakemake = walls[low] - train - sum(s for _, s in others.values())
        print(
            "  of which: "
            + ", ".join(f"{stage} {s:.1f} s ({n} jobs)" for stage, (n, s) in others.items())
            + f", Snakemake itself (wall minus all jobs) {snakemake:.1f} s"
        )
        startup = startup_seconds()
        n_other = sum(n for n, _ in others.values())
        print(
            f"  start-up floor per job process (python -m relaxbench --version): {startup:.2f} s; "
            f"x {n_other} non-training jobs = {startup * n_other:.1f} s"
        )
    per_model = (
        jobs.assign(model=jobs["run"].str.split("/").str[1]).groupby("model")["eval_over_epoch"].median()
    )
    print(
        f"equivariance-error evaluation / one training epoch: median over models {per_model.median():.3f} "
        f"(per model: {', '.join(f'{m} {v:.3f}' for m, v in per_model.items())}); over runs: median "
        f"{jobs['eval_over_epoch'].median():.3f}, max {jobs['eval_over_epoch'].max():.3f}"
    )
    print(
        f"peak RSS per training job: median {jobs['max_rss_mb'].median():.0f} MB, max {jobs['max_rss_mb'].max():.0f} MB"
    )
    print(jobs.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
