"""Steerable CNN family: invariance, projection, relaxed penalty, export, and a tiny end-to-end run.

escnn samples its kernel bases in float32, so even a float64 model is rot90-equivariant only to float32
rounding: invariance tolerances are tied to float32's epsilon. Penalties of exactly equivariant free kernels
(group-averaged in float64) are held to < 1e-10.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from escnn import group as escnn_group
from escnn import gspaces
from escnn import nn as enn

from relaxbench.config import RunSpec, resolve_run, validate_config
from relaxbench.families import fields
from relaxbench.families.blocks import CNN, count_cnn_parameters
from relaxbench.families.fields import RelaxedR2Conv, field_action, generator_elements, is_grid_exact
from relaxbench.models import cnn, steerable_cnn
from relaxbench.relax import lie_derivative_sq, relaxation_penalty, relaxed_layers, set_theta
from relaxbench.symmetry import model_equivariance_error
from relaxbench.tasks.rotdigits import RotDigits
from relaxbench.testing import assert_projection_exact, randomise_free_maps

SPEC = {"kind": "image_classification", "channels": 1, "size": 15, "num_classes": 10}
SMALL = {"channels": (2, 3), "kernel_size": 3, "head_hidden": 8}
TOL32 = 100 * torch.finfo(torch.float32).eps  # escnn's float32 kernel bases
GROUPS = [
    {"group": "C", "N": 8},
    {"group": "D", "N": 4},
    {"group": "SO2", "max_frequency": 2, "fourier_samples": 8},
]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return RotDigits({"canvas": 15, "zoom_size": 11}, tmp_path_factory.mktemp("unused"))


def images(n: int = 3, size: int = 15, seed: int = 0) -> dict[str, torch.Tensor]:
    return {
        "image": torch.rand(
            n, 1, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
    }


def build(seed: int = 0, **params):
    torch.manual_seed(seed)
    return steerable_cnn.build(SPEC, **{**SMALL, **params})


def _train_batchnorm(model) -> None:
    """One forward in train mode so that batch-norm running statistics are not the identity."""
    model.train()
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        model({"image": images(8, seed=1)["image"].to(dtype)})


@pytest.mark.parametrize("params", GROUPS, ids=lambda p: p["group"])
def test_projected_classifier_is_invariant_under_quarter_turns(task, params):
    model = build(**params, relaxed=True).double()
    _train_batchnorm(model)
    err = model_equivariance_error(model, task, images(), n_elements=6, seed=0)
    assert err.dtype == "float64"
    assert err.exact < TOL32, err
    assert err.approx > err.exact  # interpolated rotations are not exact symmetries of a pixel grid


@pytest.mark.parametrize("params", GROUPS[:2], ids=lambda p: p["group"])
def test_theta_zero_relaxed_equals_plain_bit_for_bit(params, task):
    """In float32 and for C and D (tests/test_contract.py: C8 in float64)."""
    plain, relaxed = build(**params), build(**params, relaxed=True)
    assert len(list(relaxed_layers(relaxed))) == 2
    assert_projection_exact(plain, relaxed, task, {"image": images()["image"].float()})


def _layer(gspace, generators="grid", fields=2, init_std=0.3) -> RelaxedR2Conv:
    group = gspace.fibergroup
    if group.order() > 0:
        field_type = enn.FieldType(gspace, fields * [gspace.regular_repr])
    else:
        field_type = enn.FieldType(gspace, [group.irrep(1), group.trivial_representation, group.irrep(2)])
    torch.manual_seed(0)
    return RelaxedR2Conv(enn.R2Conv(field_type, field_type, 3, padding=1), generators, init_std).double()


def _penalty(layer: RelaxedR2Conv, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    set_theta(layer, 0.5)
    layer.train()
    layer(enn.GeometricTensor(x, layer.in_type))
    return layer.penalty_terms()


GSPACES = {
    "C8": lambda: gspaces.rot2dOnR2(8),
    "D4": lambda: gspaces.flipRot2dOnR2(4),
    "C6": lambda: gspaces.rot2dOnR2(6),
    "SO2": lambda: gspaces.rot2dOnR2(-1, maximum_frequency=2),
}


@pytest.mark.parametrize("name", GSPACES)
def test_field_action_matches_escnn_transform(name):
    gs = GSPACES[name]()
    layer = _layer(gs)
    elements = generator_elements(gs, "grid")
    x = torch.randn(2, layer.in_type.size, 7, 7, dtype=torch.float64)
    for g in elements:
        assert is_grid_exact(gs, g)
        expected = enn.GeometricTensor(x, layer.in_type).transform(g).tensor
        assert torch.equal(field_action(x, layer.in_type, g), expected)


@pytest.mark.parametrize(
    "name,generators", [("C8", "grid"), ("D4", "grid"), ("D4", "group"), ("C6", "group"), ("SO2", "grid")]
)
def test_weight_space_penalty_equals_the_generic_finite_difference(name, generators):
    layer = _layer(GSPACES[name](), generators)
    x = torch.randn(3, layer.in_type.size, 9, 9, dtype=torch.float64)
    ld, sq = _penalty(layer, x)
    generic = lie_derivative_sq(layer.free_linear, x, layer.action)
    assert layer.weight_space == (generators == "grid" or name == "D4")
    assert ld > 1.0
    torch.testing.assert_close(ld, generic, rtol=1e-12, atol=0)
    torch.testing.assert_close(sq, layer.free(x).pow(2).sum() / 3, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["C8", "D4", "SO2"])
def test_penalty_vanishes_for_equivariant_free_kernels_only(name):
    layer = _layer(GSPACES[name]())
    x = torch.randn(3, layer.in_type.size, 9, 9, dtype=torch.float64)
    ld_random, _ = _penalty(layer, x)
    assert ld_random > 1.0
    with torch.no_grad():
        layer.free.weight.copy_(fields.group_averaged_kernel(layer))
    ld_avg, sq = _penalty(layer, x)
    assert ld_avg < 1e-10 and sq > 1.0
    twin = enn.R2Conv(layer.in_type, layer.out_type, 3, padding=1).double()
    with torch.no_grad():  # escnn's own equivariant filter: exact up to its float32 basis
        layer.free.weight.copy_(twin.expand_parameters()[0])
    ld_escnn, sq = _penalty(layer, x)
    assert ld_escnn < TOL32**2 * sq


@pytest.mark.parametrize("name", ["C8", "SO2"])
def test_the_default_penalty_sees_the_whole_group(name):
    """A C4-equivariant but not C8 (SO(2)) free kernel costs nothing with the grid's generators; the default
    ("full") adds the distance to escnn's equivariant kernels, which is positive for it and zero for escnn's."""
    grid, full = _layer(GSPACES[name](), "grid"), _layer(GSPACES[name](), "full")
    assert full.span is not None and grid.span is None
    x = torch.randn(3, full.in_type.size, 9, 9, dtype=torch.float64)
    c4_only = fields.group_averaged_kernel(grid)  # averaged over C4 only
    for layer in (grid, full):
        with torch.no_grad():
            layer.free.weight.copy_(c4_only)
    assert _penalty(grid, x)[0] < 1e-10
    ld, sq = _penalty(full, x)
    assert ld > 1e-2 * sq
    twin = enn.R2Conv(full.in_type, full.out_type, 3, padding=1).double()
    with torch.no_grad():
        full.free.weight.copy_(twin.expand_parameters()[0])
    ld_escnn, sq = _penalty(full, x)
    assert ld_escnn < TOL32**2 * sq


def test_full_is_the_grid_penalty_where_the_grid_generates_the_group():
    assert _layer(GSPACES["D4"](), "full").span is None


@pytest.mark.parametrize("name", ["C8", "D4", "SO2"])
def test_conjugation_by_index_equals_the_dense_matrices(name):
    layer = _layer(GSPACES[name]())
    assert layer.weight_space and layer.by_index  # regular / irreps fields at 90 degrees: signed permutations
    gs, kernel = layer.in_type.gspace, layer.free.weight.detach()
    trivial = enn.FieldType(gs, [gs.trivial_repr])
    for g, lie in zip(generator_elements(gs, "grid"), layer.lie_kernels().detach()):
        moved = field_action(kernel.flatten(0, 1).unsqueeze(1), trivial, ~g).view_as(kernel)  # K(g q)
        rho_in = torch.as_tensor(np.asarray(layer.in_type.representation(g)))
        rho_out = torch.as_tensor(np.asarray(layer.out_type.representation(g)))
        expected = torch.einsum("po,pikl,ij->ojkl", rho_out, moved, rho_in) - kernel
        torch.testing.assert_close(lie, expected, rtol=0, atol=1e-12)  # escnn's rho has float64 rounding


def test_group_generator_penalty_sees_interpolation_error():
    layer = _layer(GSPACES["C8"](), "group")
    assert not layer.weight_space
    twin = enn.R2Conv(layer.in_type, layer.out_type, 3, padding=1).double()
    with torch.no_grad():
        layer.free.weight.copy_(twin.expand_parameters()[0])
    ld, sq = _penalty(layer, torch.randn(3, layer.in_type.size, 9, 9, dtype=torch.float64))
    assert 0 < ld < sq  # 45-degree rotations on a pixel grid are approximate


def test_dense_conjugation_for_fields_in_a_rotated_basis():
    gs = gspaces.rot2dOnR2(4)
    basis, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))
    field_type = enn.FieldType(gs, 2 * [escnn_group.change_basis(gs.regular_repr, basis, "rotated_regular")])
    torch.manual_seed(0)
    layer = RelaxedR2Conv(enn.R2Conv(field_type, field_type, 3, padding=1), "grid", 0.3).double()
    assert layer.weight_space and not layer.by_index
    x = torch.randn(3, field_type.size, 9, 9, dtype=torch.float64)
    ld, _ = _penalty(layer, x)
    assert ld > 1.0
    torch.testing.assert_close(ld, lie_derivative_sq(layer.free_linear, x, layer.action), rtol=1e-10, atol=0)


def test_subsampled_penalty_averages_to_the_full_batch_penalty():
    layer = _layer(GSPACES["C8"]())
    x = torch.randn(6, layer.in_type.size, 9, 9, dtype=torch.float64)
    full = torch.stack(_penalty(layer, x))
    layer.penalty_examples = 2
    chunks = [torch.stack(_penalty(layer, torch.roll(x, -2 * i, 0))) for i in range(3)]  # chunk i first
    assert not torch.allclose(chunks[0], full)
    torch.testing.assert_close(torch.stack(chunks).mean(0), full, rtol=1e-12, atol=0)


def test_model_penalty_and_penalty_subsample():
    assert steerable_cnn.build(SPEC, relaxed=True, **SMALL).body[0].penalty_examples == 4  # the default
    full = build(relaxed=True, penalty_examples=None).double()
    sub = build(relaxed=True, penalty_examples=2).double()
    sub.load_state_dict(full.state_dict())
    for model in (full, sub):
        randomise_free_maps(model, seed=3)
        set_theta(model, 0.5)
        model.train()
        model(images(4))
    pen_full, pen_sub = relaxation_penalty(full), relaxation_penalty(sub)
    assert pen_full["lie"] > 0 and pen_full["norm"] > 0
    assert [layer._last_input.shape[0] for layer in relaxed_layers(sub)] == [2, 2]
    assert not torch.allclose(pen_full["lie"], pen_sub["lie"])
    pen_full["lie"].backward()
    assert all(layer.free.weight.grad.abs().sum() > 0 for layer in relaxed_layers(full))


def test_fused_forward_matches_the_sum_of_branches():
    model = build(relaxed=True).double()
    randomise_free_maps(model, seed=3)
    layer = next(relaxed_layers(model))
    x = enn.GeometricTensor(images()["image"], layer.in_type)
    for mode in (True, False):
        layer.train(mode)
        set_theta(layer, 0.7)
        expected = layer.equivariant(x).tensor + 0.7 * layer.free(x.tensor)
        torch.testing.assert_close(layer(x).tensor, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("params", GROUPS[:2], ids=lambda p: p["group"])
def test_export_equals_unexported(params):
    model = build(**params, relaxed=True)
    _train_batchnorm(model)
    x = {"image": images()["image"].float()}
    model.eval()
    with torch.no_grad():
        expected = model(x)
        exported = model.export_for_eval()
        assert exported is not model
        assert not any(isinstance(m, enn.EquivariantModule) for m in exported.modules())
        torch.testing.assert_close(exported(x), expected, rtol=1e-5, atol=1e-6)


def test_export_falls_back_where_it_does_not_apply():
    relaxed = build(relaxed=True)
    set_theta(relaxed, 0.5)
    assert relaxed.export_for_eval() is relaxed
    so2 = build(**GROUPS[2])
    assert so2.export_for_eval() is so2


def test_unconstrained_twin_matches_parameter_count():
    model = build()
    twin = steerable_cnn.build_unconstrained(SPEC, **SMALL)
    n_model, n_twin = (sum(p.numel() for p in m.parameters()) for m in (model, twin))
    assert isinstance(twin, CNN)
    assert abs(n_twin - n_model) / n_model < 0.1
    assert n_twin == count_cnn_parameters(1, 10, [twin.net[0].out_channels] * 2, 3, 8)
    with pytest.raises(ValueError, match="no equivariant layers"):
        cnn.build(SPEC, relaxed=True)


def test_bad_architectures_are_refused():
    with pytest.raises(ValueError, match="breaks exact"):
        steerable_cnn.build({**SPEC, "size": 16}, **SMALL)
    with pytest.raises(ValueError, match="odd"):
        build(kernel_size=4)
    with pytest.raises(ValueError, match="no rotation acting exactly"):
        build(group="C", N=3, relaxed=True)
    with pytest.raises(ValueError, match="SO\\(2\\) has no finite generators"):
        build(**GROUPS[2], relaxed=True, generators="group")


@pytest.mark.slow
def test_two_epoch_training_run_writes_an_ok_record(tmp_path):
    from relaxbench.records import read_record
    from relaxbench.train import train_run

    cfg = validate_config(
        {
            "name": "cnn-test",
            "seeds": [0],
            "training": {
                "epochs": 2,
                "batch_size": 16,
                "eval_batch_size": 64,
                "equivariance_samples": 4,
                "equivariance_examples": 4,
            },
            "tasks": {
                "rotdigits": {
                    "n_train": 40,
                    "n_val": 20,
                    "n_test": 20,
                    "test_rotations": 2,
                    "canvas": 15,
                    "zoom_size": 11,
                }
            },
            "models": {
                "steerable_cnn": {
                    "tasks": ["rotdigits"],
                    "params": {"channels": [2, 3], "kernel_size": 3},
                    "methods": ["relaxed"],
                }
            },
        }
    )
    resolved = resolve_run(cfg, RunSpec("rotdigits", "steerable_cnn", "relaxed", 0))
    record = train_run(resolved, tmp_path / "run", tmp_path / "data")
    assert record.status == "ok", record.reason
    saved = read_record(tmp_path / "run" / "record.json")
    assert saved.status == "ok" and saved.family == "steerable_cnn" and saved.params_free > 0
    assert saved.equiv_final_exact < TOL32 and 0.0 <= saved.test["error_rate"] <= 1.0
    assert saved.exported  # projected C_N model: metrics from escnn's plain-torch export
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    relaxed_epoch = history[history.theta > 0].iloc[0]
    assert relaxed_epoch.lie > 0 and relaxed_epoch.norm > 0
