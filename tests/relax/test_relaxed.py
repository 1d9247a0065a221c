"""The relaxed layer: projection at theta = 0, the free branch, penalties and their gradients."""

import pytest
import torch
from e3nn import o3
from torch import nn

from relaxbench.families.irreps import irreps_generators, linear_matrix, relax
from relaxbench.models import tfn
from relaxbench.relax import (
    RelaxedLayer,
    free_parameters,
    lie_derivative_sq,
    make_lie_action,
    relaxation_penalty,
    relaxed_layers,
    set_theta,
)
from relaxbench.relax.dense import DenseRelaxedLinear
from relaxbench.tasks.tetris import Tetris
from relaxbench.testing import assert_projection_exact

F64 = torch.float64
SPEC = {"num_classes": 8}
SMALL = {"hidden": "4x0e + 4x0o + 2x1e + 2x1o", "layers": 2}


def tetris_task(tmp_path):
    task = Tetris({"n_train": 1, "n_val": 1, "n_test": 2}, tmp_path)
    task.prepare()
    return task


def twins(seed=0, dtype=F64):
    torch.manual_seed(seed)
    plain = tfn.build(SPEC, relaxed=False, **SMALL).to(dtype)
    torch.manual_seed(seed)
    relaxed = tfn.build(SPEC, relaxed=True, **SMALL).to(dtype)
    return plain, relaxed


def test_plain_models_contain_no_relaxed_layers():
    plain, relaxed = twins()
    assert not list(relaxed_layers(plain))
    assert len(list(relaxed_layers(relaxed))) == 2
    assert free_parameters(plain) == [] and len(free_parameters(relaxed)) == 2


def test_theta_zero_equals_the_plain_twin_bit_for_bit_in_float32(tmp_path):
    """tests/test_contract.py checks every model in float64; here tfn in float32 too."""
    plain, relaxed = twins(dtype=torch.float32)
    batch = {
        k: v.float() if v.is_floating_point() else v
        for k, v in tetris_task(tmp_path).load_splits()["test"].head(16).items()
    }
    assert_projection_exact(plain, relaxed, tetris_task(tmp_path), batch)


def test_set_theta_rejects_negative_values():
    _, relaxed = twins()
    with pytest.raises(ValueError, match="theta"):
        set_theta(relaxed, -0.1)


def dense_layer(bias: bool, fused: bool, gen):
    irreps_in, irreps_out = o3.Irreps("3x0e + 2x1o + 1x2e"), o3.Irreps("2x0e + 3x1o")
    lin = o3.Linear(irreps_in, irreps_out).to(F64)
    layer = DenseRelaxedLinear(
        lin,
        irreps_in.dim,
        irreps_out.dim,
        irreps_generators(irreps_in),
        irreps_generators(irreps_out),
        init_std=0.5,
        bias=bias,
        equivariant_matrix=(lambda: linear_matrix(lin)) if fused else None,
    ).to(F64)
    if bias:
        nn.init.normal_(layer.free.bias)
    x = torch.randn(6, 5, irreps_in.dim, generator=gen, dtype=F64)
    return layer, x


@pytest.mark.parametrize("bias", [False, True])
def test_second_moment_penalties_equal_the_direct_definition(bias):
    gen = torch.Generator().manual_seed(0)
    layer, x = dense_layer(bias, True, gen)
    layer.train()
    set_theta(layer, 0.7)
    layer(x)
    ld, sq = layer.penalty_terms()
    direct_ld = RelaxedLayer.penalty_terms(layer)[0]  # generic path: W(dA x) - dA W(x), bias removed
    assert ld.item() == pytest.approx(direct_ld.item(), rel=1e-10)
    assert sq.item() == pytest.approx((layer.free(x).pow(2).sum() / x.shape[0]).item(), rel=1e-10)
    action = make_lie_action(layer.gen_in, layer.gen_out)
    weight = layer.free.weight
    assert ld.item() == pytest.approx(
        lie_derivative_sq(lambda v: v @ weight.t(), x, action).item(), rel=1e-10
    )


def test_fused_forward_equals_the_sum_of_branches():
    gen = torch.Generator().manual_seed(1)
    fused, x = dense_layer(False, True, gen)
    set_theta(fused, 0.3)
    expected = fused.equivariant(x) + 0.3 * fused.free(x)
    assert torch.allclose(fused(x), expected, atol=1e-12)
    set_theta(fused, 0.0)
    assert torch.equal(fused(x), fused.equivariant(x))


def test_penalty_gradient_is_finite_for_a_zero_free_map():
    layer = relax(o3.Linear("2x0e + 1x1o", "1x0e + 2x1o"), True, init_std=0.0)
    model = nn.Sequential(layer)
    set_theta(model, 1.0)
    model.train()
    model(torch.randn(4, 5))
    pen = relaxation_penalty(model)
    (pen["lie"] + pen["norm"]).backward()
    assert torch.isfinite(layer.free.weight.grad).all()
    assert pen["lie"].item() == pytest.approx(1e-4, rel=1e-3)  # sqrt(0 + eps)


def test_penalty_is_zero_at_theta_zero_and_without_input():
    _, relaxed = twins()
    set_theta(relaxed, 0.0)
    relaxed.train()
    relaxed({"pos": torch.randn(3, 4, 3, dtype=F64)})
    pen = relaxation_penalty(relaxed)
    assert pen["lie"].item() == 0.0 and pen["norm"].item() == 0.0


def test_free_branch_does_not_consume_the_global_random_stream():
    torch.manual_seed(5)
    relax(o3.Linear("2x0e", "2x0e"), True)
    after_relaxed = torch.rand(1)
    torch.manual_seed(5)
    relax(o3.Linear("2x0e", "2x0e"), False)
    assert torch.equal(after_relaxed, torch.rand(1))
