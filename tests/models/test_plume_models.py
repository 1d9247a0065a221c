"""Smoke-plume forecasters (conv, equiv, rsteer, lift): C4 equivariance, projection, penalties, RSteer's prior.

The group action is escnn's own ``GeometricTensor.transform`` on ``T_in`` x ``irrep(1)`` input fields and one
``irrep(1)`` output field of ``rot2dOnR2(4)`` (what the plume task's action is tested to agree with). escnn
samples its kernel bases in float32, so a float64 model is C4-equivariant only to float32 rounding: the
tolerance is ``TOL32``; a model that is not equivariant scores above 1e-3.
"""

from __future__ import annotations

import pytest
import torch
from escnn import gspaces
from escnn import nn as enn

from relaxbench.families.fields import RelaxedR2Conv
from relaxbench.methods import get_method
from relaxbench.models import _plume, conv, equiv, lift, rsteer
from relaxbench.models._rsteer import RSteerConv
from relaxbench.relax import prior_penalty, relaxation_penalty, relaxed_layers, set_theta
from relaxbench.symmetry import GroupElement, equivariance_error
from relaxbench.train import regulariser

SPEC = {"kind": "plume", "symmetry": "rotation", "in_frames": 2, "size": 8}
SMALL = {"hidden": 2, "layers": 3}
TOL32 = 100 * torch.finfo(torch.float32).eps
MODELS = {"equiv": equiv, "rsteer": rsteer, "lift": lift}
GS = gspaces.rot2dOnR2(4)


def frames(n: int = 3, seed: int = 0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    shape = (n, SPEC["in_frames"], 2, SPEC["size"], SPEC["size"])
    return {"frames": torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)}


def c4_error(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """``mean_x max_g ||f(g x) - g f(x)|| / ||f(x)||`` over the three quarter turns, model in eval mode."""
    t = batch["frames"].shape[1]
    in_type = enn.FieldType(GS, t * [GS.irrep(1)])
    out_type = enn.FieldType(GS, [GS.irrep(1)])
    elements = [GroupElement(f"rot{90 * k}", True, {"g": GS.fibergroup.element(k)}) for k in (1, 2, 3)]

    def act(g, b):
        moved = enn.GeometricTensor(b["frames"].flatten(1, 2), in_type).transform(g.data["g"]).tensor
        return {"frames": moved.unflatten(1, (t, 2))}

    def act_output(g, y):
        return enn.GeometricTensor(y, out_type).transform(g.data["g"]).tensor

    model.eval()
    with torch.no_grad():
        return equivariance_error(model, batch, elements, act, act_output).exact


def build(module, seed: int = 0, **params) -> torch.nn.Module:
    torch.manual_seed(seed)
    return module.build(SPEC, **{**SMALL, **params})


def trained_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """One train-mode forward so that batch-norm running statistics are not the identity."""
    model.train()
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        model(frames(8, seed=1, dtype=dtype))
    return model


def randomise_free(model: torch.nn.Module, std: float = 0.3) -> None:
    with torch.no_grad():
        for layer in relaxed_layers(model):
            layer.free.weight.normal_(0.0, std, generator=torch.Generator().manual_seed(3))


def test_shapes_and_parameter_budgets():
    spec = {**SPEC, "in_frames": 4, "size": 16}
    counts = {}
    for name, module in {"conv": conv, **MODELS}.items():
        torch.manual_seed(0)
        model = module.build(spec)
        x = {"frames": torch.randn(2, 4, 2, 16, 16)}
        assert model(x).shape == (2, 2, 16, 16)
        counts[name] = _plume.parameter_count(model)
    print("default parameter counts (T_in 4, 16x16):", counts)
    assert abs(counts["conv"] - counts["equiv"]) / counts["equiv"] < 0.05  # one budget for Conv and Equiv
    assert counts["rsteer"] > counts["equiv"]  # one coefficient set per kernel position
    for module in MODELS.values():
        twin = module.build_unconstrained(spec)
        assert isinstance(twin, _plume.PlumeCNN)
        target = _plume.parameter_count(module.build(spec))
        assert abs(_plume.parameter_count(twin) - target) / target < 0.1
    assert _plume.parameter_count(conv.build(spec, hidden=7)) == _plume.cnn_parameters(4, 7, 5, 3)


@pytest.mark.parametrize("name", ["equiv", "rsteer"])
def test_plain_and_projected_models_are_c4_equivariant(name):
    for relaxed in (False, True):
        model = trained_batch_norm(build(MODELS[name], relaxed=relaxed, batch_norm=True).double())
        assert c4_error(model, frames()) < TOL32


def test_tester_flags_models_that_are_not_equivariant():
    plain = trained_batch_norm(build(conv, hidden=4).double())
    lifted = trained_batch_norm(build(lift).double())
    assert c4_error(plain, frames()) > 1e-3
    assert c4_error(lifted, frames()) > 1e-3  # its encoder is not equivariant


def test_rsteer_is_equivariant_exactly_when_its_coefficients_are_tied():
    model = build(rsteer).double()
    assert float(model.prior_penalty()) == 0.0  # starts tied (escnn's initialisation of its equiv twin)
    with torch.no_grad():
        for layer in model.rsteer_layers():
            layer.coefficients.add_(0.3 * torch.randn_like(layer.coefficients))
    model.eval()
    assert model.prior_penalty() > 0
    assert c4_error(model, frames()) > 1e-3
    model.train().tie_()
    assert float(model.prior_penalty()) == 0.0
    assert c4_error(model, frames()) < TOL32


def test_tied_rsteer_computes_the_equiv_network_of_the_same_seed():
    for batch_norm in (False, True):
        plain = build(equiv, batch_norm=batch_norm).double()
        relaxed = build(rsteer, batch_norm=batch_norm).double()
        assert [type(m) for m in relaxed.body] == [
            RSteerConv if isinstance(m, enn.R2Conv) else type(m) for m in plain.body
        ]
        x = frames()
        torch.testing.assert_close(relaxed(x), plain(x), rtol=1e-6, atol=1e-6)  # float32 basis, summed apart


@pytest.mark.parametrize("name", list(MODELS))
def test_theta_zero_relaxed_equals_plain_bit_for_bit(name):
    plain, relaxed = build(MODELS[name]), build(MODELS[name], relaxed=True)
    assert len(list(relaxed_layers(relaxed))) == SMALL["layers"] and not list(relaxed_layers(plain))
    x = frames(4, dtype=torch.float32)
    for mode in (True, False):
        plain.train(mode)
        relaxed.train(mode)
        assert torch.equal(plain(x), relaxed(x))


@pytest.mark.parametrize("name", ["equiv", "rsteer"])
def test_relaxed_breaks_symmetry_at_positive_theta_and_projection_restores_it(name):
    model = trained_batch_norm(build(MODELS[name], relaxed=True).double())
    randomise_free(model)
    set_theta(model, 0.5)
    assert c4_error(model, frames()) > 1e-3
    set_theta(model, 0.0)
    assert c4_error(model, frames()) < TOL32


@pytest.mark.parametrize("name", list(MODELS))
def test_lie_penalty_vanishes_on_equivariant_free_maps_only(name):
    model = build(MODELS[name], relaxed=True).double()
    randomise_free(model)
    set_theta(model, 0.5)
    model.train()
    model(frames())
    random = relaxation_penalty(model)
    assert random["lie"] > 1e-2 and random["norm"] > 1e-2
    layers = list(relaxed_layers(model))
    assert all(isinstance(layer, RelaxedR2Conv) for layer in layers)
    with torch.no_grad():  # each free kernel := an escnn-equivariant kernel of the same field types
        for layer in layers:
            twin = _plume.r2conv(layer.in_type, layer.out_type, layer.free.kernel_size[0], 1).double()
            layer.free.weight.copy_(twin.expand_parameters()[0])
    model(frames())
    for layer in layers:
        ld, sq = layer.penalty_terms()
        assert sq > 1e-3 and ld < TOL32**2 * sq


def test_rsteer_prior_enters_the_training_loss_under_every_method():
    model = build(rsteer, relaxed=True, alpha=0.5)
    with torch.no_grad():
        for layer in model.rsteer_layers():
            layer.coefficients.add_(0.1 * torch.randn_like(layer.coefficients))
    expected = 0.5 * sum(layer.smoothness() for layer in model.rsteer_layers())
    torch.testing.assert_close(prior_penalty(model), expected)
    assert prior_penalty(build(equiv)) is None
    for method in ("equivariant", "relaxed", "rpp"):
        model.zero_grad()
        set_theta(model, 0.0 if method == "equivariant" else 0.5)
        model.train()
        model(frames(4, dtype=torch.float32))
        reg, terms = regulariser(model, get_method(method), 0.5)
        assert terms["prior"] == pytest.approx(float(expected))
        reg.backward()
        assert all(layer.coefficients.grad.abs().sum() > 0 for layer in model.rsteer_layers())


def test_bad_specs_and_parameters_are_refused():
    with pytest.raises(ValueError, match="kind 'plume'"):
        equiv.build({"kind": "image_classification", "channels": 1, "size": 9, "num_classes": 2})
    with pytest.raises(ValueError, match="'symmetry' must be one of"):
        rsteer.build({**SPEC, "symmetry": "translation"})
    with pytest.raises(ValueError, match="no equivariant layers"):
        conv.build(SPEC, relaxed=True)
    with pytest.raises(ValueError, match="layers > 2"):
        lift.build(SPEC, layers=2)
    with pytest.raises(ValueError, match="alpha"):
        rsteer.build(SPEC, alpha=-1.0)
