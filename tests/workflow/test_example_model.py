"""The worked example of docs/ADD_A_MODEL.md: a user's e3nn model registered from a config alone."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from relaxbench.cli import main
from relaxbench.families.irreps import linear_matrix
from relaxbench.relax import relaxed_layers, set_theta
from relaxbench.symmetry import model_equivariance_error
from relaxbench.tasks.tetris import SHAPES, Tetris
from tests.workflow.helpers import REPO

_spec = importlib.util.spec_from_file_location("my_model", REPO / "examples" / "my_model.py")
my_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(my_model)

SPEC = {"num_classes": 8}


@pytest.fixture
def task(tmp_path):
    return Tetris(None, tmp_path)


@pytest.fixture
def batch():
    pos = torch.from_numpy(SHAPES - SHAPES.mean(axis=1, keepdims=True))  # [8, 4, 3] float64
    return {
        "pos": pos
        + 0.05 * torch.randn(pos.shape, generator=torch.Generator().manual_seed(1), dtype=pos.dtype)
    }


def build(relaxed, seed=0):
    torch.manual_seed(seed)
    return my_model.build(SPEC, relaxed=relaxed).double()


def error(model, task, batch):
    return model_equivariance_error(model, task, batch, n_elements=4, seed=0).exact


#: Float64 tolerance of a model built in float32 and cast: 4e-11 of the logits' input-dependent part
#: (5e-15 when built in float64; the head bias is ~80x that part, so ``||f(x)||`` would read 80x less).
TOL = 1e-9


def test_plain_model_is_invariant_to_rotations_and_point_order(task, batch):
    assert error(build(False), task, batch) < TOL


def test_projected_relaxed_model_equals_its_plain_twin_bit_for_bit(batch):
    plain, relaxed = build(False).eval(), build(True).eval()
    set_theta(relaxed, 0.0)
    assert torch.equal(plain(batch), relaxed(batch))


def test_relaxed_model_with_random_free_maps_is_not_invariant(task, batch):
    model = build(True)
    for layer in relaxed_layers(model):
        torch.nn.init.normal_(layer.free.weight, std=0.3, generator=torch.Generator().manual_seed(2))
    set_theta(model, 0.5)
    assert error(model, task, batch) > 1e-3
    set_theta(model, 0.0)
    assert error(model, task, batch) < TOL


def lie_terms(model, batch):
    model.train()
    set_theta(model, 0.5)
    model(batch)
    return [float(layer.penalty_terms(lie=True, norm=False)[0]) for layer in relaxed_layers(model)]


def test_lie_penalty_vanishes_exactly_for_equivariant_free_maps(batch):
    model = build(True)
    with torch.no_grad():
        for layer in relaxed_layers(model):
            layer.free.weight.copy_(linear_matrix(layer.equivariant).t())  # an equivariant map, [d_out, d_in]
    terms = lie_terms(model, batch)
    assert len(terms) == 2 and max(terms) < 1e-10


def test_lie_penalty_is_positive_for_random_free_maps(batch):
    model = build(True)
    for layer in relaxed_layers(model):
        torch.nn.init.normal_(layer.free.weight, std=0.3, generator=torch.Generator().manual_seed(3))
    assert min(lie_terms(model, batch)) > 1e-6


def test_model_tells_the_chiral_pair_apart(batch):
    model = build(False).eval()
    mirrored = {"pos": batch["pos"] * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)}
    assert (model(batch) - model(mirrored)).abs().max() > 1e-8  # an achiral model: ~1e-16 in float64


def test_the_example_config_trains_the_user_model(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "examples"))  # what PYTHONPATH=examples does for the command line
    try:
        assert (
            main(
                [
                    "train",
                    "--config",
                    str(REPO / "examples/my_model.yaml"),
                    "--task",
                    "tetris",
                    "--model",
                    "my_point_classifier",
                    "--method",
                    "relaxed",
                    "--seed",
                    "0",
                    "--results",
                    str(tmp_path),
                    "--quiet",
                ]
            )
            == 0
        )
    finally:
        sys.modules.pop("my_model", None)
    record = json.loads(
        (tmp_path / "my_model/runs/tetris/my_point_classifier/relaxed/seed0/record.json").read_text()
    )
    assert record["status"] == "ok"
    assert (record["arch"], record["family"]) == ("my_model:build", "tensor_field")
    assert record["params_free"] > 0 and record["equiv_final_exact"] < 1e-6
