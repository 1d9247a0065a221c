"""SEGNN on N-body: structure, l_max = 2, the gate, a tiny run (the contract: test_contract.py)."""

import pytest
import torch
from e3nn import o3

from relaxbench.models import segnn
from relaxbench.tasks.nbody import NBody
from relaxbench.testing import assert_equivariant
from tests.models import nbody_checks as checks

SMALL = {"hidden": 4, "layers": 1}


@pytest.fixture(scope="module")
def models():
    return checks.twins(segnn, SMALL)


def test_hidden_irreps_are_weight_balanced():
    assert segnn.balanced_hidden_irreps(64, 1) == o3.Irreps("32x0e + 32x1o")  # as in the SEGNN paper
    assert segnn.balanced_hidden_irreps(16, 2).lmax == 2


def test_segnn_with_l_max_2_is_equivariant(tmp_path):
    model = checks.build64(segnn, False, {**SMALL, "l_max": 2})
    assert model.irreps_hidden.lmax == 2
    assert_equivariant(model, NBody({}, tmp_path), checks.batch())  # l_max = 1 is in the contract


def test_segnn_relaxes_both_update_layers_of_every_layer(models):
    plain, relaxed = models
    for layer in relaxed.layers:
        for update in (layer.update1, layer.update2):
            free = update.linear.free
            assert free.weight.shape == (update.linear.equivariant.tp.irreps_out.dim, update.irreps_in.dim)
            assert free.bias is None
        assert not hasattr(layer.message1.linear, "free") and not hasattr(layer.message2.linear, "free")
    free = sum(
        p.numel()
        for layer in relaxed.layers
        for u in (layer.update1, layer.update2)
        for p in u.linear.free.parameters()
    )
    assert sum(p.numel() for p in relaxed.parameters()) == sum(p.numel() for p in plain.parameters()) + free


def test_segnn_centres_positions_over_particles(models):
    plain, _ = models
    x = checks.batch()
    shifted = {**x, "loc": x["loc"] + torch.tensor([5.0, -3.0, 2.0], dtype=torch.float64)}
    with torch.no_grad():
        assert torch.allclose(plain(shifted) - shifted["loc"], plain(x) - x["loc"], rtol=0, atol=1e-12)


def test_swish_gate_is_equivariant():
    irreps = o3.Irreps("3x0e + 2x1o + 2x2e")
    gate = segnn.SwishGate(irreps).double()
    x = gate.irreps_in.randn(4, -1, dtype=torch.float64)
    rot = o3.rand_matrix(dtype=torch.float64)
    lhs = gate(x @ gate.irreps_in.D_from_matrix(rot).t())
    assert torch.allclose(lhs, gate(x) @ gate.irreps_out.D_from_matrix(rot).t(), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="even scalars"):
        segnn.SwishGate(o3.Irreps("2x0o + 1x1o"))


def test_segnn_tiny_training_run(tmp_path):
    checks.check_tiny_training_run("segnn", SMALL, tmp_path)


def test_segnn_feature_scale_does_not_grow_through_the_layers():
    model = checks.build64(segnn, False, {"hidden": 8, "layers": 3})
    with torch.no_grad():
        dx = model(checks.batch(b=16)) - checks.batch(b=16)["loc"]
    assert 0.01 < dx.std().item() < 5.0  # the summed (SEGNN) node attribute gave ~100 here
