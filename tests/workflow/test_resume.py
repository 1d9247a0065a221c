"""Resumability, for real: a killed job is rerun alone, a finished grid does nothing, and changing one model's
entry reruns only that model's runs. The grid holds the built-in TFN and the user model of examples/, so this
also runs a `module:function` model through the workflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.workflow.helpers import REPO, planned_jobs, snakemake, snakemake_env, write_config

pytestmark = pytest.mark.slow

EXAMPLES = [REPO / "examples"]
PROFILE = ("--workflow-profile", "workflow/profiles/default")
CONFIG = {
    "name": "resume",
    "device": "cpu",
    "seeds": [0],
    "training": {"epochs": 1, "batch_size": 16, "equivariance_samples": 2, "equivariance_examples": 4},
    "methods": {"equivariant": {}},
    "tasks": {"tetris": {"n_train": 1, "n_val": 1, "n_test": 1}},
    "models": {
        "tfn": {"tasks": ["tetris"], "params": {"hidden": "4x0e + 4x0o + 2x1e + 2x1o", "layers": 2}},
        "mine": {
            "arch": "my_model:build",
            "family": "tensor_field",
            "tasks": ["tetris"],
            "params": {"hidden": "4x0e + 4x0o + 2x1e + 2x1o", "n_radial": 3, "layers": 1},
        },
    },
}


def run_dir(workdir, model):
    return workdir / "results/resume/runs/tetris" / model / "equivariant/seed0"


def train_models(output):
    return sorted(w["model"] for rule, w in planned_jobs(output) if rule == "train")


def run_and_kill_the_second_training_job(workdir, config):
    """Start the grid on one core; once one run has its record and the other has started, SIGKILL everything.

    Returns ``(finished model, killed model)``.
    """
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "runs",
        *PROFILE,
        "--cores",
        "1",
        "--configfile",
        str(config),
        "--directory",
        str(workdir),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=snakemake_env(EXAMPLES),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    logs = workdir / "results/resume/logs/train/tetris"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = [m for m in ("tfn", "mine") if (run_dir(workdir, m) / "record.json").exists()]
            started = [m for m in ("tfn", "mine") if (logs / m / "equivariant/seed0.log").exists()]
            if len(done) == 1 and len(started) == 2:
                return done[0], ({"tfn", "mine"} - set(done)).pop()
            time.sleep(0.05)
        raise AssertionError(f"the grid did not reach the point to kill it (exit status {proc.poll()})")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # snakemake and its job: one process group, started above
        proc.wait()


def test_killed_job_reruns_alone_then_nothing_then_only_the_changed_model(tmp_path):
    workdir = tmp_path / "work"
    config = write_config(tmp_path / "resume.yaml", CONFIG)
    finished, killed = run_and_kill_the_second_training_job(workdir, config)
    assert not (run_dir(workdir, killed) / "record.json").exists()

    # the killed job (its outputs marked incomplete) is the only one planned, and then the only one run
    out = snakemake(
        "runs", "-n", *PROFILE, "--configfile", str(config), workdir=workdir, extra_pythonpath=EXAMPLES
    )
    assert train_models(out.stdout) == [killed] and "data" not in {
        rule for rule, _ in planned_jobs(out.stdout)
    }
    # a killed snakemake leaves its lock behind: release it (as a user would), then resume
    snakemake("--unlock", "--configfile", str(config), workdir=workdir, extra_pythonpath=EXAMPLES)
    out = snakemake(
        "runs",
        *PROFILE,
        "--cores",
        "1",
        "--configfile",
        str(config),
        workdir=workdir,
        extra_pythonpath=EXAMPLES,
    )
    assert train_models(out.stdout) == [killed]
    for model in ("tfn", "mine"):
        record = json.loads((run_dir(workdir, model) / "record.json").read_text())
        assert record["status"] == "ok" and (run_dir(workdir, model) / "history.csv").exists()
    assert record["arch"] == "my_model:build"

    # a finished grid: nothing to do
    out = snakemake(
        "runs", "-n", *PROFILE, "--configfile", str(config), workdir=workdir, extra_pythonpath=EXAMPLES
    )
    assert "Nothing to be done" in out.stdout

    # one model's parameter changes: only its run is planned (plus the leaderboard and the report)
    changed = json.loads(json.dumps(CONFIG))
    changed["models"]["mine"]["params"]["n_radial"] = 4
    out = snakemake(
        "-n",
        *PROFILE,
        "--configfile",
        str(write_config(tmp_path / "changed.yaml", changed)),
        workdir=workdir,
        extra_pythonpath=EXAMPLES,
    )
    assert train_models(out.stdout) == ["mine"]
    assert sorted(rule for rule, _ in planned_jobs(out.stdout)) == ["all", "collect", "report", "train"]
    assert "params have changed since last execution" in out.stdout
