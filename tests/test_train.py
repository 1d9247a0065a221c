"""One run end to end on tetris/TFN: a complete record, determinism, divergence."""

import json
import math

import pandas as pd
import pytest
import torch

from relaxbench import registry
from relaxbench.config import RunSpec, resolve_run, validate_config
from relaxbench.records import read_record
from relaxbench.tasks.base import Split
from relaxbench.train import Trainer, train_run

METRICS_ONLY = (
    "train",
    "val",
    "test",
    "gen_gap",
    "equiv_init_exact",
    "equiv_final_exact",
    "equiv_init_exact_abs",
    "equiv_final_exact_abs",
    "best_epoch",
    "test_metric_unprojected",
    "params_total",
    "params_free",
)


def run(cfg, tmp_path, method="relaxed", seed=0, name="run"):
    cfg = validate_config(cfg)
    resolved = resolve_run(cfg, RunSpec("tetris", "tfn", method, seed))
    out = tmp_path / name
    record = train_run(resolved, out, tmp_path / "data")
    return record, out


def test_relaxed_run_writes_a_complete_record(tiny_config, tmp_path):
    tiny_config["training"]["epochs"] = 3
    record, out = run(tiny_config, tmp_path)
    assert record.status == "ok"
    on_disk = read_record(out / "record.json")
    assert on_disk == record
    assert set(record.test) == {"loss", "error_rate", "accuracy"}
    assert record.gen_gap == pytest.approx(record.test["loss"] - record.train["loss"])
    assert (
        record.equiv_final_exact < 1e-9 and record.equiv_init_exact < 1e-9
    )  # projected: exactly equivariant
    assert record.equiv_dtype == "float64"
    assert 0 <= record.equiv_final_exact_abs < 1e-8 and record.equiv_init_exact_abs is not None
    # point data: every element is exact
    assert record.equiv_final_approx is None and record.equiv_final_approx_abs is None
    assert record.params_free > 0 and record.params_total == record.params_free + record.params_equivariant
    assert record.time_per_step_s > 0 and record.wall_time_s > 0 and record.steps == 3
    assert record.versions["torch"] and record.started_at and record.config_hash
    assert record.run_config["method_params"]["schedule"] == "triangle"
    history = pd.read_csv(out / "history.csv")
    assert list(history["theta"]) == pytest.approx([0.0, 2 / 3, 2 / 3])
    assert {"lie", "norm", "val_error_rate", "train_seconds"} <= set(history.columns)
    assert history["lie"].iloc[1] > 0 and history["lie"].iloc[0] == 0
    assert (out / "model.pt").exists() and not (out / ".partial").exists()
    shares = [c for c in history if c.startswith("share:")]
    assert len(shares) == 2  # one column per relaxed layer of tfn
    assert (history[shares].iloc[0] == 0).all() and (history[shares].iloc[1:] > 0).all().all()
    assert record.free_share_peak == pytest.approx(history[shares].to_numpy().max(), rel=1e-12)
    checked = history["equiv_unprojected_exact"].notna().tolist()
    assert checked == [False, True, False]  # theta > 0 at epochs 1 and 2: one check, the first of them
    assert history["equiv_unprojected_exact"].iloc[1] > 1e3 * record.equiv_final_exact


def trainer(cfg, tmp_path, method):
    resolved = resolve_run(validate_config(cfg), RunSpec("tetris", "tfn", method, 0))
    task = registry.get_task_class("tetris")(resolved["task_params"], tmp_path / "data")
    if not task.prepared():
        task.prepare()
    return Trainer(resolved, task, task.load_splits(), torch.device("cpu"), quiet=True)


@pytest.mark.parametrize(
    "epochs, expected",
    [(2, [1]), (5, [1, 4]), (8, [1, 3, 5, 7]), (40, [1, 11, 20, 29, 39])],
)
def test_unprojected_checks_are_few_evenly_spaced_and_at_positive_theta(
    tiny_config, tmp_path, epochs, expected
):
    tiny_config["training"]["epochs"] = epochs
    assert trainer(tiny_config, tmp_path, "relaxed").unprojected_check_epochs() == expected
    assert trainer(tiny_config, tmp_path, "equivariant").unprojected_check_epochs() == []


def test_equivariant_run_records_no_activity(tiny_config, tmp_path):
    record, out = run(tiny_config, tmp_path, method="equivariant")
    history = pd.read_csv(out / "history.csv")
    assert record.free_share_peak is None
    assert not [c for c in history if c.startswith(("share:", "equiv_unprojected"))]


def test_equivariance_error_dtype_comes_from_the_config(tiny_config, tmp_path):
    tiny_config["training"]["equivariance_dtype"] = "float32"
    record, _ = run(tiny_config, tmp_path)
    assert record.status == "ok" and record.equiv_dtype == "float32"
    assert 0 < record.equiv_final_exact < 100 * 1.2e-7  # float32 rounding of an exactly equivariant model


def test_same_seed_same_record_and_other_seed_differs(tiny_config, tmp_path):
    a, _ = run(tiny_config, tmp_path, name="a")
    b, _ = run(tiny_config, tmp_path, name="b")
    tiny_config["seeds"] = [1]
    c, _ = run(tiny_config, tmp_path, seed=1, name="c")
    assert all(getattr(a, f) == getattr(b, f) for f in METRICS_ONLY)
    assert a.test != c.test


def test_equivariant_and_relaxed_runs_of_one_seed_start_from_the_same_network(tiny_config, tmp_path):
    tiny_config["training"]["epochs"] = 1  # triangle: theta = 0 in the only epoch, so both train identically
    eq, _ = run(tiny_config, tmp_path, method="equivariant", name="eq")
    rel, _ = run(tiny_config, tmp_path, method="relaxed", name="rel")
    assert eq.test == rel.test


def test_diverged_run_is_recorded_not_dropped(tiny_config, tmp_path):
    tiny_config["training"].update(lr=1e12, epochs=3)
    record, out = run(tiny_config, tmp_path, method="equivariant")
    assert record.status == "diverged"
    assert "non-finite" in record.reason or "never finite" in record.reason
    assert json.loads((out / "record.json").read_text())["status"] == "diverged"
    assert not (out / "model.pt").exists()
    assert record.test == {} and record.gen_gap is None


def test_rpp_keeps_its_free_branch_at_evaluation(tiny_config, tmp_path):
    tiny_config["methods"] = {"rpp": {}}
    record, _ = run(tiny_config, tmp_path, method="rpp")
    assert record.status == "ok"
    assert record.run_config["method_params"]["project"] is False
    assert record.test_metric_unprojected is None
    assert math.isfinite(record.test["loss"])


@pytest.mark.parametrize("method", ["dual_ascent", "dual_ascent_resilient"])
def test_dual_ascent_runs_record_their_dual_variables(tiny_config, tmp_path, method):
    tiny_config["methods"] = {method: {}}
    tiny_config["training"]["epochs"] = 3
    record, out = run(tiny_config, tmp_path, method=method)
    assert record.status == "ok"
    assert len(record.dual["gamma"]) == 2 and all(v > 0 for v in record.dual["lambda"])
    history = pd.read_csv(out / "history.csv")
    assert list(history["theta"]) == [1.0, 1.0, 1.0]
    assert (history["lambda_mean"].diff().dropna() > 0).all()  # violated all along: the multipliers rise
    resilient = method == "dual_ascent_resilient"
    assert record.run_config["method_params"]["project"] is not resilient
    if resilient:  # evaluated with the learned gammas: only approximately equivariant
        assert record.dual["slack"] == pytest.approx([v / 1.0 for v in record.dual["lambda"]])
        assert record.equiv_final_exact > 1e-9
    else:  # projected to gamma = 0: exactly the equivariant model
        assert record.equiv_final_exact < 1e-9 and record.test_metric_unprojected is not None


def test_symmetrised_run_is_exactly_invariant(tiny_config, tmp_path):
    tiny_config["methods"] = {"symmetrised": {}}
    tiny_config["tasks"]["tetris"]["jitter"] = 0.05  # generic shapes: distinct covariance eigenvalues
    record, _ = run(tiny_config, tmp_path, method="symmetrised")
    assert record.status == "ok" and record.params_free > 0
    assert record.equiv_final_exact < 1e-9
    assert record.run_config["method_params"]["project"] is False


def test_published_layout_ablation_trains_with_the_published_penalty(tiny_config, tmp_path):
    """Same network and batches as ``relaxed``; only the Lie term differs (its value: tests/relax/test_lie.py)."""
    tiny_config["methods"] = {"relaxed_published_lie": {}, "relaxed": {}}
    published, out = run(tiny_config, tmp_path, method="relaxed_published_lie", name="published")
    _, out_paper = run(tiny_config, tmp_path, method="relaxed", name="paper")
    assert published.status == "ok" and published.equiv_final_exact < 1e-9
    assert published.run_config["method_params"]["lie_layout"] == "published"
    lie, lie_paper = (pd.read_csv(o / "history.csv")["lie"].iloc[1] for o in (out, out_paper))
    assert lie > 0 and lie != pytest.approx(lie_paper, rel=1e-6)


def test_equivariance_examples_are_one_fixed_subset_across_the_classes(tiny_config, tmp_path):
    """Tetris stores its test split ordered by class: the first 8 examples would all be one shape."""
    cfg = validate_config(tiny_config)
    trainers = []
    for method, seed in (("relaxed", 0), ("equivariant", 1)):
        resolved = resolve_run(cfg, RunSpec("tetris", "tfn", method, seed))
        task = registry.get_task_class("tetris")(resolved["task_params"], tmp_path / "data")
        if not task.prepared():
            task.prepare()
        trainers.append(Trainer(resolved, task, task.load_splits(), torch.device("cpu"), quiet=True))
    first, second = (t.equivariance_examples() for t in trainers)
    assert len(first["label"]) == cfg["training"]["equivariance_examples"]
    assert len(set(first["label"].tolist())) >= 4  # spans the classes (8 of them)
    assert all(torch.equal(first[k], second[k]) for k in first)  # the same examples for every method and seed


def test_split_evenly_spaced_spans_the_split_and_is_capped():
    split = Split({"x": torch.arange(10.0)})
    assert torch.equal(split.evenly_spaced(4)["x"], torch.tensor([0.0, 3.0, 6.0, 9.0]))
    assert torch.equal(split.evenly_spaced(9)["x"].unique(), split.evenly_spaced(9)["x"])  # no repeats
    assert torch.equal(split.evenly_spaced(50)["x"], torch.arange(10.0))
