"""Helpers for the workflow tests: run Snakemake on a copy of a config in a temporary working directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def snakemake_env(extra_pythonpath: list[Path] = (), base: dict[str, str] | None = None) -> dict[str, str]:
    """This interpreter's bin first on PATH (so the jobs' `python -m relaxbench` runs in it), on top of
    ``base`` (default: this process's environment)."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    paths = [str(p) for p in extra_pythonpath] + [p for p in [env.get("PYTHONPATH")] if p]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def snakemake(
    *args: str,
    workdir: Path,
    check: bool = True,
    timeout: float = 600,
    extra_pythonpath: list[Path] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``snakemake ARGS --directory WORKDIR`` from the repository root (in ``env``, default this process's
    environment); stdout and stderr merged."""
    cmd = [sys.executable, "-m", "snakemake", *args, "--directory", str(workdir)]
    out = subprocess.run(
        cmd,
        cwd=REPO,
        env=snakemake_env(extra_pythonpath, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited with {out.returncode}:\n{out.stdout[-6000:]}")
    return out


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


_JOB = re.compile(r"^(?:local)?rule (\w+):\n((?:    .*\n)*)", re.MULTILINE)


def planned_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """The jobs a dry run lists: ``(rule, wildcards)`` in the order printed."""
    jobs = []
    for rule, body in _JOB.findall(output):
        found = re.search(r"^    wildcards: (.*)$", body, re.MULTILINE)
        wildcards = dict(item.split("=", 1) for item in found.group(1).split(", ")) if found else {}
        jobs.append((rule, wildcards))
    return jobs


def job_counts(output: str) -> dict[str, int]:
    """The dry run's "Job stats" table as ``{rule: count}`` (without the total)."""
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE))
    counts.pop("total", None)
    return {rule: int(n) for rule, n in counts.items()}
