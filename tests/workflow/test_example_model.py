"""The worked example of docs/ADD_A_MODEL.md: a user's e3nn model registered from a config alone."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from relaxbench.cli import main
from relaxbench.tasks.tetris import SHAPES, Tetris
from relaxbench.testing import (
    assert_equivariant,
    assert_penalty_null_space,
    assert_projection_exact,
    assert_relaxed_breaks_symmetry,
    assert_separates,
    assert_theta_reaches_every_layer,
    mirrored,
)
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
    noise = 0.05 * torch.randn(pos.shape, generator=torch.Generator().manual_seed(1), dtype=pos.dtype)
    return {"pos": pos + noise, "label": torch.arange(8)}


def build(relaxed, seed=0):
    torch.manual_seed(seed)
    return my_model.build(SPEC, relaxed=relaxed).double()


def test_user_model_passes_the_contract(task, batch):
    """The checks every built-in model passes (tests/test_contract.py), from relaxbench.testing, in float64."""
    plain, relaxed = build(False), build(True)
    assert_equivariant(plain, task, batch)  # invariant to rotations and point order
    assert_separates(plain, task, batch, mirrored(batch))  # SO(3) only: tells the chiral pair apart
    assert_projection_exact(plain, relaxed, task, batch)  # theta = 0: the plain model bit for bit
    assert_relaxed_breaks_symmetry(relaxed, task, batch)  # theta > 0, random free maps: not invariant
    assert_theta_reaches_every_layer(relaxed, task, batch)
    terms = assert_penalty_null_space(relaxed, task, batch)  # Lie penalty zero exactly on equivariant maps
    assert len(terms) == 2  # one relaxed linear map per block


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
