"""The smoke config end to end, as a user runs it: data, every run, the leaderboard and the HTML report."""

from __future__ import annotations

import zipfile

import pandas as pd
import pytest

from relaxbench.config import expand_runs, load_config
from tests.workflow.helpers import REPO, snakemake

pytestmark = pytest.mark.slow


def test_smoke_config_runs_to_the_html_report(tmp_path):
    snakemake(
        "--cores",
        "2",
        "--configfile",
        "configs/smoke.yaml",
        "--workflow-profile",
        "workflow/profiles/default",
        workdir=tmp_path,
        timeout=1800,
    )
    runs = expand_runs(load_config(REPO / "configs/smoke.yaml"))
    for run in runs:
        assert (tmp_path / run.path("smoke") / "record.json").exists()
    leaderboard = pd.read_csv(tmp_path / "results/smoke/leaderboard.csv")
    assert len(leaderboard) == len(runs)
    assert set(leaderboard["status"]) == {"ok"}, leaderboard.loc[
        leaderboard["status"] != "ok", ["task", "model", "method", "seed", "reason"]
    ]
    assert (tmp_path / "reports/smoke/index.html").stat().st_size > 0
    assert '<section id="plume">' in (tmp_path / "reports/smoke/index.html").read_text()  # Table 2
    out = snakemake("-n", "--configfile", "configs/smoke.yaml", workdir=tmp_path)
    assert "Nothing to be done" in out.stdout
    snakemake(
        "--report", str(tmp_path / "report.zip"), "--configfile", "configs/smoke.yaml", workdir=tmp_path
    )
    with zipfile.ZipFile(tmp_path / "report.zip") as archive:
        names = archive.namelist()
    for packaged in ("/leaderboard.csv", "/aggregates.csv", "/index.html", "report/report.html"):
        assert any(name.endswith(packaged) for name in names), packaged
