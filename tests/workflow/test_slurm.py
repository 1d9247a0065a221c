"""The cluster path on a real SLURM: a one-node cluster of Debian's `slurm-wlm` and `munge` (started and stopped
here, tests/workflow/slurm_cluster.py), the pre-flight check on it, and the smoke config through the project's
SLURM profile and the cluster's site file (workflow/profiles/slurm/onenode.yaml) to the HTML report, with the
README's cluster commands. Skipped, with the reason, where the cluster cannot start (not root, not installed).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from relaxbench.config import expand_runs, load_config
from tests.workflow.helpers import REPO, snakemake, snakemake_env
from tests.workflow.slurm_cluster import (
    PARTITION,
    PARTITION_MINUTES,
    node_line,
    one_node_cluster,
    unavailable,
)

pytestmark = pytest.mark.slow

PROFILE = "workflow/profiles/slurm"
SITE = "workflow/profiles/slurm/onenode.yaml"
SMOKE = "configs/smoke.yaml"
NO_SACCT = "sacct sees no jobs here (Slurm accounting storage is disabled)"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The running one-node cluster: the environment its commands run in."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with one_node_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


def node() -> dict[str, int]:
    fields = dict(item.split("=", 1) for item in node_line().split())
    return {"cpus": int(fields["CPUs"]), "mem_mb": int(fields["RealMemory"])}


def cluster_check(env, *profiles: str, config: str = SMOKE) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "relaxbench", "cluster-check", "--config", config]
    for profile in profiles:
        cmd += ["--profile", profile]
    return subprocess.run(
        cmd, cwd=REPO, env=snakemake_env(base=env), capture_output=True, text=True, timeout=120
    )


def site_with(tmp_path, **changes) -> str:
    """The one-node site file with some top-level keys replaced."""
    site = yaml.safe_load((REPO / SITE).read_text())
    site.update(changes)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    return str(path)


def test_the_site_file_fits_the_cluster(slurm):
    out = cluster_check(slurm, PROFILE, SITE)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == [
        "warning: account: none given, none needed (AccountingStorageEnforce = none); the plugin's warning 'not "
        "able to get a SLURM account via sacct' is harmless",
        f"fits: data: 1 CPU, 4000 MB, 30 min, 0 GPUs, partition {PARTITION}",
        f"fits: train: 1 CPU, 4000 MB, 60 min, 0 GPUs, partition {PARTITION}",
    ]


@pytest.mark.parametrize(
    "problem", ["cpus", "gpu", "status", "memory", "time", "partition"], ids=lambda problem: problem
)
def test_each_unsatisfiable_request_is_named_and_stops_the_check(slurm, tmp_path, problem):
    """Each deliberately bad request, one at a time on top of the site file: exactly its line, exit 2."""
    have = node()
    where = f"partition '{PARTITION}'"
    jobs = yaml.safe_load((REPO / SITE).read_text())["set-resources"]
    bad = {
        "cpus": (
            {"set-threads": {"train": have["cpus"] + 1}},
            f"error: train: asks {have['cpus'] + 1} CPUs per task; the nodes of {where} have at most "
            f"{have['cpus']} (set-threads: train: {have['cpus']} or fewer)",
        ),
        "gpu": (
            {"set-resources": {**jobs, "train": {**jobs["train"], "gpu": 1}}},
            f"error: train: asks 1 GPU; the nodes of {where} have none (gpu / gres: gpu:N, gpu_model, or a "
            "partition with GPUs)",
        ),
        "status": (
            {"slurm-status-command": "sacct"},
            f"error: status: {NO_SACCT}, so Snakemake would wait forever for finished jobs "
            "(slurm-status-command: squeue)",
        ),
        "memory": (
            {"set-resources": {**jobs, "data": {**jobs["data"], "mem_mb": have["mem_mb"] + 1}}},
            f"error: data: asks {have['mem_mb'] + 1} MB of memory; the nodes of {where} have at most "
            f"{have['mem_mb']} MB (mem_mb)",
        ),
        "time": (
            {"set-resources": {**jobs, "train": {**jobs["train"], "runtime": PARTITION_MINUTES + 1}}},
            f"error: train: asks {PARTITION_MINUTES + 1} minutes; {where} allows at most {PARTITION_MINUTES} "
            "(runtime)",
        ),
        "partition": (
            {"default-resources": {"slurm_partition": "gpu"}},
            f"error: data: partition 'gpu' does not exist; partitions: {PARTITION} (slurm_partition)",
        ),
    }
    changes, line = bad[problem]
    out = cluster_check(slurm, PROFILE, site_with(tmp_path, **changes))
    assert out.returncode == 2, out.stdout + out.stderr
    errors = [found for found in out.stdout.splitlines() if found.startswith("error:")]
    assert errors[0] == line
    assert len(errors) == (2 if problem == "partition" else 1), errors  # data and train share the partition


def test_the_shipped_profile_alone_stops_the_workflow_before_anything_is_submitted(slurm, tmp_path):
    """Without a site file the profile asks a GPU (and 4 CPUs, 32 GB, 24 h) and polls with sacct: the
    workflow's own pre-flight check stops it, naming the problems, and no job reaches the queue."""
    out = snakemake("--profile", PROFILE, "--configfile", SMOKE, workdir=tmp_path, env=slurm, check=False)
    assert out.returncode != 0
    assert (
        "relaxbench cluster-check: error: train: asks 1 GPU; the nodes of partition 'debug' have none"
        in out.stdout
    )
    assert f"relaxbench cluster-check: error: status: {NO_SACCT}" in out.stdout
    assert "nothing was submitted" in out.stdout
    queue = subprocess.run(["squeue", "-h"], env=slurm, capture_output=True, text=True, check=True).stdout
    assert queue.strip() == "" and "has been submitted" not in out.stdout


def test_smoke_config_through_slurm_to_the_html_report(slurm, tmp_path):
    """README's cluster section on this cluster, its site file being a copy of onenode.yaml: the check with
    the paper's config, then the smoke config through SLURM to the report."""
    site = str(tmp_path / "site.yaml")
    shutil.copy(REPO / SITE, site)
    assert cluster_check(slurm, PROFILE, site, config="configs/paper.yaml").returncode == 0
    assert cluster_check(slurm, PROFILE, site).returncode == 0
    work = tmp_path / "work"
    out = snakemake(
        "--profile", PROFILE, "--profile", site, "--configfile", SMOKE, workdir=work, env=slurm, timeout=1800
    )
    assert (
        f"relaxbench cluster-check: fits: train: 1 CPU, 4000 MB, 60 min, 0 GPUs, partition {PARTITION}"
        in (out.stdout)
    )
    runs = expand_runs(load_config(REPO / SMOKE))
    assert out.stdout.count("has been submitted with SLURM jobid") == len(runs) + len(
        load_config(REPO / SMOKE)["tasks"]
    )
    for run in runs:
        assert (work / run.path("smoke") / "record.json").exists()
    leaderboard = pd.read_csv(work / "results/smoke/leaderboard.csv")
    assert len(leaderboard) == len(runs) and set(leaderboard["status"]) == {"ok"}
    assert (work / "reports/smoke/index.html").stat().st_size > 0
    again = snakemake("--profile", PROFILE, "--profile", site, "--configfile", SMOKE, workdir=work, env=slurm)
    assert "Nothing to be done" in again.stdout
