"""One smoke-plume run of the smoke config through the workflow: PhiFlow data, training, both test splits."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.workflow.helpers import snakemake

pytestmark = pytest.mark.slow

RUN = "results/smoke/runs/plume/rsteer/relaxed/seed0"


def test_smoke_plume_run_through_the_workflow(tmp_path):
    snakemake(f"{RUN}/record.json", "--cores", "2", "--configfile", "configs/smoke.yaml", workdir=tmp_path)
    record = json.loads((tmp_path / RUN / "record.json").read_text())
    assert record["status"] == "ok", record["reason"]
    assert record["metric"] == "rmse" and record["test"]["rmse"] > 0
    assert record["tests"]["test_domain"]["rmse"] > 0
    assert record["equiv_final_exact"] is not None  # quarter turns, exact on the grid
    curve = pd.read_csv(tmp_path / RUN / "rollout.csv")
    assert sorted(set(curve["split"])) == ["test", "test_domain"] and curve["step"].max() == 3
    (data,) = (tmp_path / "results/smoke/data/plume").iterdir()
    done = json.loads((data / "DONE.json").read_text())
    assert done["source"] == "generated" and done["max_divergence"] < 1e-10 * done["max_speed"]
