"""Wall time of a config through SLURM on the one-node test cluster, per first-status-check interval.

Starts the one-node cluster of the tests (tests/workflow/slurm_cluster.py: root, Debian's slurm-wlm and munge),
then runs ``snakemake --profile workflow/profiles/slurm --profile workflow/profiles/slurm/onenode.yaml`` on the
config once per ``--init-seconds`` value (the site file's ``slurm-init-seconds-before-status-checks``, all its
other settings unchanged), each in a fresh working directory, and prints per run: the wall time, the SLURM jobs
submitted, and the sum of the jobs' own times (Snakemake's benchmark files: the commands inside the jobs). The
wall time against the same config run locally (``bench_workflow.py``) is the cost of going through SLURM:
submission (the plugin pauses 5 s before each sbatch, two submissions at a time), each job's Snakemake start
inside its allocation, and status polling (the plugin checks after ``init-seconds``, then 10 s later each time
while no job finished).

    python benchmarks/bench_slurm.py [--config configs/smoke.yaml] [--init-seconds 2 40]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.workflow.slurm_cluster import one_node_cluster, unavailable  # noqa: E402

PROFILE = REPO / "workflow/profiles/slurm"
SITE = PROFILE / "onenode.yaml"


def run_once(config: Path, init_seconds: int, workdir: Path, env: dict[str, str]) -> dict[str, float]:
    """One complete run in ``workdir``: wall seconds, SLURM jobs, seconds inside the jobs."""
    site = yaml.safe_load(SITE.read_text())
    site["slurm-init-seconds-before-status-checks"] = init_seconds
    site_file = workdir / "site.yaml"
    workdir.mkdir(parents=True)
    site_file.write_text(yaml.safe_dump(site))
    cmd = ["snakemake", "--profile", str(PROFILE), "--profile", str(site_file), "--configfile", str(config)]
    cmd += ["--directory", str(workdir), "-s", str(REPO / "Snakefile")]
    env = dict(env, PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"snakemake failed ({out.returncode}):\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    name = yaml.safe_load(config.read_text())["name"]
    tsvs = [
        p
        for sub in ("data", "train")
        for p in (workdir / "results" / name / "benchmarks" / sub).rglob("*.tsv")
    ]
    inside = sum(pd.read_csv(p, sep="\t")["s"].iloc[0] for p in tsvs)
    jobs = (out.stdout + out.stderr).count("has been submitted with SLURM jobid")
    return {"wall_s": wall, "jobs": jobs, "inside_s": inside}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs/smoke.yaml")
    parser.add_argument("--init-seconds", type=int, nargs="+", default=[2, 40])
    args = parser.parse_args(argv)
    reason = unavailable()
    if reason:
        raise SystemExit(f"bench_slurm: {reason}")
    print(f"# {' '.join(['python', *sys.argv])}")
    print(f"{'init-seconds':>12}{'wall s':>10}{'SLURM jobs':>12}{'inside jobs s':>15}")
    with tempfile.TemporaryDirectory() as tmp, one_node_cluster(Path(tmp) / "cluster") as env:
        for seconds in args.init_seconds:
            r = run_once(args.config.resolve(), seconds, Path(tmp) / f"run{seconds}", env)
            print(f"{seconds:>12}{r['wall_s']:>10.1f}{r['jobs']:>12}{r['inside_s']:>15.1f}", flush=True)


if __name__ == "__main__":
    main()
