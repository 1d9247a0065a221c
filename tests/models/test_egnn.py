"""EGNN and the linear baseline on N-body: structure, paper defaults, a tiny run (the contract: test_contract.py)."""

import pytest
import torch

from relaxbench.models import egnn, nbody_linear
from tests.models import nbody_checks as checks

SMALL = {"hidden": 8, "layers": 2}


@pytest.fixture(scope="module")
def models():
    return checks.twins(egnn, SMALL)


def test_egnn_relaxes_the_coordinate_update_of_every_layer(models):
    plain, relaxed = models
    assert all(layer.update.free.weight.shape == (3, 12) for layer in relaxed.layers)
    assert all(layer.update.free.bias is None for layer in relaxed.layers)
    assert sum(p.numel() for p in relaxed.parameters()) == sum(p.numel() for p in plain.parameters()) + 2 * 36


def test_egnn_paper_scale_defaults():
    model = checks.build64(egnn, False, {})  # the paper's 4 layers of 64
    assert len(model.layers) == 4 and model.embed.out_features == 64
    assert model(checks.batch(b=3)).shape == (3, 5, 3)


def test_linear_baseline_is_x_plus_w_v_and_relaxes():
    plain, relaxed = checks.twins(nbody_linear, {})
    x = checks.batch()
    with torch.no_grad():
        plain.drift.weight.fill_(0.75)
        assert torch.allclose(plain(x), x["loc"] + 0.75 * x["vel"], rtol=0, atol=1e-15)
        plain.drift.weight.fill_(0.0)
    assert sum(p.numel() for p in plain.parameters()) == 1
    assert relaxed.drift.free.weight.shape == (3, 6)  # W [x - xbar, v]; the contract checks the rest


def test_egnn_tiny_training_run(tmp_path):
    checks.check_tiny_training_run("egnn", SMALL, tmp_path)
