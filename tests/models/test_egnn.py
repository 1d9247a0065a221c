"""EGNN on N-body: E(3) x permutation equivariance, projection, free branch, Lie penalty, a tiny run."""

import pytest
import torch

from relaxbench.models import egnn, nbody_linear
from tests.models import nbody_checks as checks

SMALL = {"hidden": 8, "layers": 2}


@pytest.fixture(scope="module")
def models():
    return checks.twins(egnn, SMALL)


def vector_mix_weight(layer):
    """An equivariant free map on C stacked vectors: ``[c_1 I, ..., c_C I]`` with random ``c``."""
    c = torch.randn(layer.free.weight.shape[1] // 3, dtype=layer.free.weight.dtype)
    return torch.kron(c[None, :], torch.eye(3, dtype=c.dtype))


def test_egnn_is_equivariant_and_relaxes(models, tmp_path):
    checks.check_projection_and_free_branch(*models, tmp_path)


def test_egnn_lie_penalty_vanishes_exactly_on_equivariant_free_maps(models):
    checks.check_lie_penalty(models[1], vector_mix_weight)


def test_egnn_relaxes_the_coordinate_update_of_every_layer(models):
    plain, relaxed = models
    assert all(layer.update.free.weight.shape == (3, 12) for layer in relaxed.layers)
    assert all(layer.update.free.bias is None for layer in relaxed.layers)
    assert sum(p.numel() for p in relaxed.parameters()) == sum(p.numel() for p in plain.parameters()) + 2 * 36


def test_egnn_paper_scale_defaults():
    model = checks.build64(egnn, False, {})  # the paper's 4 layers of 64
    assert len(model.layers) == 4 and model.embed.out_features == 64
    assert model(checks.batch(b=3)).shape == (3, 5, 3)


def test_linear_baseline_is_x_plus_w_v_and_relaxes(tmp_path):
    plain, relaxed = checks.twins(nbody_linear, {})
    x = checks.batch()
    with torch.no_grad():
        plain.drift.weight.fill_(0.75)
        assert torch.allclose(plain(x), x["loc"] + 0.75 * x["vel"], rtol=0, atol=1e-15)
        plain.drift.weight.fill_(0.0)
    assert sum(p.numel() for p in plain.parameters()) == 1
    checks.check_projection_and_free_branch(plain, relaxed, tmp_path)
    checks.check_lie_penalty(relaxed, vector_mix_weight)


def test_egnn_tiny_training_run(tmp_path):
    checks.check_tiny_training_run("egnn", SMALL, tmp_path)
