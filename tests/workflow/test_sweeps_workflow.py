"""A swept config through the real workflow: one data set per distinct task parameter set, one folder per cell,
axis columns in the tables, a sweep figure in the report; editing one axis value plans only its runs."""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from tests.workflow.helpers import planned_jobs, snakemake, write_config

pytestmark = pytest.mark.slow

CONFIG = {
    "name": "sweep",
    "device": "cpu",
    "seeds": [0],
    "training": {"epochs": 1, "batch_size": 16, "equivariance_samples": 2, "equivariance_examples": 4},
    "methods": {"equivariant": {}, "relaxed": {}},
    "tasks": {"tetris": {"n_train": 1, "n_val": 1, "n_test": 1}},
    "models": {
        "tfn": {
            "tasks": ["tetris"],
            "params": {"hidden": "4x0e + 4x0o + 2x1e + 2x1o", "layers": 1},
            "sweeps": [{"params.layers": [1, 2]}, {"tetris.n_train": [1, 2]}],
        }
    },
}
CELLS = ["tfn", "tfn+params.layers=2", "tfn+tetris.n_train=2"]


def _edited(axis_index, axis, values):
    cfg = copy.deepcopy(CONFIG)
    cfg["models"]["tfn"]["sweeps"][axis_index] = {axis: values}
    return cfg


def _planned(tmp_path, workdir, cfg):
    """The jobs a dry run of the training grid of ``cfg`` plans in ``workdir``."""
    out = snakemake(
        "runs", "-n", "--configfile", str(write_config(tmp_path / "edited.yaml", cfg)), workdir=workdir
    )
    return planned_jobs(out.stdout)


def test_a_swept_grid_runs_once_per_cell_and_reruns_only_an_edited_value(tmp_path):
    workdir = tmp_path / "work"
    config = write_config(tmp_path / "sweep.yaml", CONFIG)
    snakemake("--cores", "2", "--configfile", str(config), workdir=workdir, timeout=1800)
    results = workdir / "results/sweep"
    assert sorted(p.name for p in (results / "runs/tetris").iterdir()) == CELLS
    assert len(list((results / "data/tetris").glob("*/DONE.json"))) == 2  # n_train 1 (twice) and 2

    board = pd.read_csv(results / "leaderboard.csv", keep_default_na=False)
    assert len(board) == 3 * 2 and set(board["status"]) == {"ok"}
    cells = board.groupby("sweep")[["params.layers", "tetris.n_train"]].first()
    assert cells.to_dict("index") == {
        "": {"params.layers": 1, "tetris.n_train": 1},
        "params.layers=2": {"params.layers": 2, "tetris.n_train": 1},
        "tetris.n_train=2": {"params.layers": 1, "tetris.n_train": 2},
    }
    agg = pd.read_csv(results / "aggregates.csv", keep_default_na=False)
    relaxed = agg[agg["method"] == "relaxed"]
    assert sorted(relaxed["sweep"]) == ["", "params.layers=2", "tetris.n_train=2"]
    assert (relaxed["test_metric_vs_equivariant_n"] == 1).all()  # paired within each cell
    index = (workdir / "reports/sweep/index.html").read_text("utf-8")
    for n in (0, 1):
        assert f'src="figures/tetris--tfn--sweep{n}.png"' in index
        assert (workdir / f"reports/sweep/figures/tetris--tfn--sweep{n}.png").stat().st_size > 5000
    assert index.count('class="verdict-cell"') == 3

    # one value of the model axis changes: only that cell's runs are planned, no data
    edited = _edited(0, "params.layers", [1, 3])
    jobs = _planned(tmp_path, workdir, edited)
    assert sorted(w["model"] for rule, w in jobs if rule == "train") == ["tfn+params.layers=3"] * 2
    assert "data" not in {rule for rule, _ in jobs}
    # run it for real with a file in the report folder relaxbench did not write: the report job fails and leaves
    # the old report; once the file is gone a plain rerun rebuilds the report alone (Snakemake keeps the failed
    # job's update() output and would take it for current) over the folder Snakemake marked finished
    # (its .snakemake_timestamp)
    edited = write_config(tmp_path / "e.yaml", edited)
    (workdir / "reports/sweep/notes.txt").write_text("mine")
    out = snakemake("--cores", "2", "--configfile", str(edited), workdir=workdir, check=False, timeout=1800)
    assert out.returncode != 0 and "'notes.txt'" in (results / "logs/report.log").read_text()
    assert "params.layers=3" not in (workdir / "reports/sweep/index.html").read_text("utf-8")
    (workdir / "reports/sweep/notes.txt").unlink()
    out = snakemake("--cores", "2", "--configfile", str(edited), workdir=workdir, timeout=1800)
    assert sorted(rule for rule, _ in planned_jobs(out.stdout)) == ["all", "report"]
    index = (workdir / "reports/sweep/index.html").read_text("utf-8")
    stale = index.split('<section id="stale">', 1)[1].split("</section>", 1)[0]
    assert "params.layers=3" in index and "tfn+params.layers=2/relaxed/seed0" in stale  # the edited-away cell

    # one value of the task axis changes: its data set once, then its runs
    jobs = _planned(tmp_path, workdir, _edited(1, "tetris.n_train", [1, 3]))
    assert sorted(w["model"] for rule, w in jobs if rule == "train") == ["tfn+tetris.n_train=3"] * 2
    assert [rule for rule, _ in jobs].count("data") == 1
