"""Vector Neurons: equivariance of the layers and models, the relaxed maps and their Lie-derivative penalty."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from relaxbench.config import RunSpec, resolve_run, validate_config
from relaxbench.families import vector_neurons as vn
from relaxbench.families.so3 import cartesian_generators as so3_generators
from relaxbench.families.so3 import stacked_vector_generators as vn_generators
from relaxbench.families.vector_neurons import EPS, VNLinear, VNLinearLeakyReLU, graph_feature
from relaxbench.models import vn_dgcnn, vn_pointnet
from relaxbench.relax import lie_derivative_sq, relaxation_penalty, relaxed_layers, set_theta
from relaxbench.relax.dense import DenseRelaxedLinear
from relaxbench.symmetry import random_rotation_matrices
from relaxbench.tasks.shapes import Shapes
from relaxbench.testing import assert_equivariant
from relaxbench.train import train_run


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids OpenMP synchronisation costs (large on a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


N_POINTS = 24
TINY = {
    "vn_pointnet": (vn_pointnet, {"channels": (4, 6, 8), "k": 5, "head": (16, 8)}),
    "vn_dgcnn": (vn_dgcnn, {"channels": (3, 3, 4, 4, 8), "k": 5, "head": (16, 8)}),
}
MODELS = sorted(TINY)


def _build(name: str, relaxed: bool = False, seed: int = 0, **extra) -> nn.Module:
    module, params = TINY[name]
    torch.manual_seed(seed)
    return module.build({"num_classes": 5}, relaxed=relaxed, **{**params, **extra}).double()


def _calibrated(model: nn.Module, pos: torch.Tensor) -> nn.Module:
    """Eval mode with batch-norm statistics set from one batch, so that logits depend on the input at O(1)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model({"pos": pos})
    return model.eval()


def _clouds(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, N_POINTS, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _task(tmp_path) -> Shapes:
    return Shapes({"n_points": N_POINTS}, tmp_path)


# --- models (the contract, tests/test_contract.py, checks them with mean pooling) ---------------------------
@pytest.mark.parametrize("name", MODELS)
def test_max_pooling_models_are_invariant_under_rotations_and_permutations(name, tmp_path):
    pos = _clouds()
    model = _calibrated(_build(name, pooling="max"), pos)
    logits = model({"pos": pos})
    assert logits.shape == (6, 5) and logits.std(0).min() > 1e-2  # not a constant function
    assert_equivariant(model, _task(tmp_path), {"pos": pos, "label": torch.zeros(6, dtype=torch.long)})


@pytest.mark.parametrize("name", MODELS)
def test_first_step_with_zero_free_maps_has_finite_gradients(name):
    """The free maps start at exactly zero, where d sqrt(s)/ds is infinite: the eps keeps the step finite."""
    pos, label = _clouds(), torch.arange(6) % 5

    def gradients(eps: float) -> nn.Module:
        model = _build(name, relaxed=True)
        set_theta(model, 1.0)
        model.train()
        loss = nn.functional.cross_entropy(model({"pos": pos}), label)
        penalty = relaxation_penalty(model, eps=eps)
        (loss + 0.01 * (penalty["lie"] + penalty["norm"])).backward()
        return model

    model = gradients(eps=1e-8)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    free = [layer.free.weight.grad for layer in relaxed_layers(model)]
    assert all((layer.free.weight == 0).all() for layer in relaxed_layers(model))
    assert sum(g.abs().sum() for g in free) > 0  # the free maps leave zero on the first step
    unguarded = gradients(eps=0.0)
    assert not all(torch.isfinite(p.grad).all() for p in unguarded.parameters())  # the eps is what helps


# --- layers --------------------------------------------------------------------------------------------
def _relaxed_layer(c_in=4, c_out=3, std=0.5, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    layer = vn.relax(VNLinear(c_in, c_out), True, init_std=std).double()
    with torch.no_grad():
        layer.free.bias.normal_()
    set_theta(layer, 0.7)
    return layer.train()


def _vn_input(c=4, seed=1) -> torch.Tensor:
    return torch.randn(3, c, 3, 5, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_vn_layers_are_equivariant():
    torch.manual_seed(0)
    x = _vn_input()
    rotation = random_rotation_matrices(1, torch.Generator().manual_seed(0))[0]
    rotate = lambda t: torch.einsum("ij,bcj...->bci...", rotation, t)  # noqa: E731
    for layer in (
        vn.relax(VNLinear(4, 3), False).double(),
        VNLinearLeakyReLU(4, 3, share_nonlinearity=True).double(),
    ):
        layer.eval()
        torch.testing.assert_close(layer(rotate(x)), rotate(layer(x)), rtol=0, atol=1e-12)
    pts = x[:, :, :, :, 0]  # [B, C, 3, N]: edge features of the kNN graph rotate with the points
    for cross in (False, True):
        torch.testing.assert_close(
            graph_feature(rotate(pts), 3, cross), rotate(graph_feature(pts, 3, cross)), rtol=0, atol=1e-12
        )


@pytest.mark.parametrize("negative_slope", [0.0, 0.2])
def test_leaky_relu_matches_the_published_formula(negative_slope):
    torch.manual_seed(0)
    block = VNLinearLeakyReLU(4, 3, negative_slope=negative_slope).double().eval()
    x = _vn_input()
    p, d = block.batchnorm(block.map_to_feat(x)), block.map_to_dir(x)
    dot = (p * d).sum(2, keepdim=True)
    keep = (dot >= 0).double()
    projected = p - dot / ((d * d).sum(2, keepdim=True) + EPS) * d
    expected = negative_slope * p + (1 - negative_slope) * (keep * p + (1 - keep) * projected)
    assert (keep == 0).any() and (keep == 1).any()
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-12)


def test_fused_forward_equals_equivariant_plus_theta_free():
    layer, x = _relaxed_layer(), _vn_input()
    eq = layer.equivariant(x)
    expected = eq + 0.7 * layer.free(x.reshape(x.shape[0], 3 * 4, -1)).view_as(
        eq
    )  # free map on the flat view
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def _kron_free_map(layer: nn.Module, seed: int = 3) -> None:
    """Set the free map to an equivariant one: kron(M, I_3), no bias."""
    m = torch.randn(
        layer.equivariant.c_out,
        layer.equivariant.c_in,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(seed),
    )
    with torch.no_grad():
        layer.free.weight.copy_(torch.kron(m, torch.eye(3, dtype=torch.float64)))
        layer.free.bias.zero_()


def test_lie_penalty_is_zero_exactly_for_kron_m_i3_maps():
    layer, x = _relaxed_layer(), _vn_input()
    layer(x)
    ld, sq = layer.penalty_terms()
    assert ld > 1.0 and sq > 0  # random dense map
    _kron_free_map(layer)
    ld, sq = layer.penalty_terms()
    assert ld < 1e-10 and sq > 1.0


def test_lie_penalty_matches_the_definition_and_dense_relaxed_linear():
    """Second-moment penalty == sum_a ||W(L_a x) - L_a(W x)||^2 on the data, and == DenseRelaxedLinear's on the
    last axis with the generators kron(I_C, L_a) on the same channel-major per-point vectors (the channels-first
    view and the per-point layout agree)."""
    layer, x = _relaxed_layer(), _vn_input()
    layer(x)
    ld, sq = layer.penalty_terms()
    flat = layer._last_input  # the [B, 3 C_in, P] view the relaxed layer works on
    assert flat.shape == (3, 3 * 4, 10)
    torch.testing.assert_close(ld, lie_derivative_sq(layer.free_linear, flat, layer.action))
    torch.testing.assert_close(sq, layer.free(flat).pow(2).sum() / x.shape[0])

    c_in, c_out = layer.equivariant.c_in, layer.equivariant.c_out
    equivariant = nn.Linear(3 * c_in, 3 * c_out, bias=False).double()
    equivariant.weight.data.copy_(layer.equivariant.matrix())
    dense = DenseRelaxedLinear(
        equivariant, 3 * c_in, 3 * c_out, vn_generators(c_in), vn_generators(c_out), bias=True
    ).double()
    dense.free.load_state_dict(layer.free.state_dict())
    set_theta(dense, 0.7)
    dense.train()
    per_point = x.reshape(3, 3 * c_in, -1).transpose(1, 2)  # [B, P, 3 C_in], index 3 c + xyz
    torch.testing.assert_close(dense(per_point), layer(x).reshape(3, 3 * c_out, -1).transpose(1, 2))
    dense_ld, dense_sq = dense.penalty_terms()
    torch.testing.assert_close(ld, dense_ld)
    torch.testing.assert_close(sq, dense_sq)


def _published_lie_sq(weight: torch.Tensor, x: torch.Tensor, gens: torch.Tensor) -> torch.Tensor:
    """The published computation: the generator actions are laid out generator-major,
    ``[L_x x, L_y x, L_z x]``, but split back as if component-major."""
    flat = x.reshape(x.shape[0], x.shape[1] * 3, -1).transpose(1, 2)  # [B, P, d]
    d = flat.shape[-1]
    stacked = torch.cat([flat @ g.T for g in gens], dim=-1)  # [B, P, 3 d]: generator-major
    wrongly_split = stacked.reshape(*flat.shape[:2], d, 3)  # component-major split
    out = flat @ weight.T
    return sum(
        ((wrongly_split[..., a] @ weight.T) - out @ gens_out.T).pow(2).sum()
        for a, gens_out in enumerate(vn_generators(weight.shape[0] // 3))
    )


def test_published_reshape_or_a_wrong_generator_layout_would_fail_the_null_space_test():
    layer, x = _relaxed_layer(), _vn_input()
    _kron_free_map(layer)
    layer(x)
    assert layer.penalty_terms()[0] < 1e-10
    c_in, c_out = layer.equivariant.c_in, layer.equivariant.c_out
    weight = layer.free.weight.detach()
    # 1. the published generator-major / component-major mix-up
    assert _published_lie_sq(weight, x, vn_generators(c_in)) > 1.0
    # 2. xyz-major generators kron(L_a, I_C) on channel-major vectors (a layout that does not agree)
    wrong_in, wrong_out = (
        torch.stack([torch.kron(g, torch.eye(c, dtype=torch.float64)) for g in so3_generators()])
        for c in (c_in, c_out)
    )
    per_point = x.reshape(3, 3 * c_in, -1).transpose(1, 2)
    lie = weight @ wrong_in - wrong_out @ weight
    assert (per_point @ lie.transpose(1, 2)[:, None]).pow(2).sum() > 1.0


def test_direction_map_reuses_the_feature_maps_input_statistics():
    torch.manual_seed(0)
    block = VNLinearLeakyReLU(4, 3, relaxed=True, free_init_std=0.5).double()
    set_theta(block, 0.3)
    block.train()
    x = _vn_input()
    block(x)
    feat, direction = block.map_to_feat, block.map_to_dir
    assert direction.moments() is feat.moments()
    shared = direction.penalty_terms()
    direction.share_moments(None)
    direction._moments = None
    own = direction.penalty_terms()
    torch.testing.assert_close(shared, own, rtol=0, atol=0)
    assert shared[0] > 0 and feat.penalty_terms()[0] != shared[0]  # each free map penalised on its own


# --- training ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_two_epoch_relaxed_run_writes_an_ok_record(name, tmp_path):
    module, params = TINY[name]
    cfg = validate_config(
        {
            "name": "vn-tiny",
            "device": "cpu",
            "seeds": [0],
            "tasks": {
                "shapes": {
                    "n_points": N_POINTS,
                    "n_train_per_class": 2,
                    "n_val_per_class": 1,
                    "n_test_per_class": 1,
                }
            },
            "training": {"epochs": 2, "batch_size": 8, "equivariance_samples": 2, "equivariance_examples": 4},
            "methods": {"relaxed": {}},
            "models": {
                name: {
                    "tasks": ["shapes"],
                    "params": {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
                }
            },
        }
    )
    resolved = resolve_run(cfg, RunSpec("shapes", name, "relaxed", 0))
    record = train_run(resolved, tmp_path / "run", tmp_path / "data")
    assert record.status == "ok", record.reason
    written = json.loads((tmp_path / "run" / "record.json").read_text())
    assert written["status"] == "ok" and written["family"] == "vector_neurons"
    assert written["epochs_run"] == 2 and written["params_free"] > 0
    assert written["equiv_final_exact"] < 1e-6  # projected to theta = 0
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history["theta"]) == [0.0, 1.0]  # the triangle schedule over two epochs
    assert history["norm"].iloc[1] > 0 and history["lie"].iloc[1] > 0  # penalties were on at theta = 1
