"""Dual ascent on per-layer mixing weights: multipliers rise while a constraint is violated, the resilient slack
settles at lambda / rho, and the gammas go to 0 on exactly symmetric data."""

import pytest
import torch
from e3nn import o3
from torch import nn

from relaxbench.families import irreps as irreps_family
from relaxbench.relax import relaxed_layers, set_theta
from relaxbench.relax.dual import attach_dual, dual_penalty, dual_state, dual_step

F64 = torch.float64
IRREPS = "2x0e + 2x1o"


def two_layer_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [irreps_family.relax(o3.Linear(IRREPS, IRREPS), True) for _ in range(2)]
    return nn.Sequential(*layers).to(F64)


def test_attach_gives_every_layer_its_own_gamma_and_multiplier():
    model = two_layer_model()
    before = {k for k, _ in model.named_parameters()}
    assert attach_dual(model) == 2
    added = {k for k, _ in model.named_parameters()} - before
    assert added == {"0.gamma", "1.gamma"}
    assert dual_state(model) == {"gamma": [1.0, 1.0], "lambda": [0.0, 0.0], "slack": [0.0, 0.0]}
    assert {"0.dual_lambda", "1.dual_slack"} <= set(model.state_dict())
    with pytest.raises(ValueError, match="relaxed layers"):
        attach_dual(nn.Sequential(o3.Linear(IRREPS, IRREPS)))


def test_gamma_scales_each_free_branch():
    model = two_layer_model()
    attach_dual(model)
    layer = model[0]
    nn.init.normal_(layer.free.weight)
    x = torch.randn(5, o3.Irreps(IRREPS).dim, dtype=F64)
    set_theta(model, 1.0)
    with torch.no_grad():
        layer.gamma.fill_(0.25)
    expected = layer.equivariant(x) + 0.25 * layer.free(x)
    assert torch.allclose(layer(x), expected, atol=1e-12)
    set_theta(model, 0.0)  # projection ignores gamma
    assert torch.equal(layer(x), layer.equivariant(x))


def test_multipliers_rise_while_the_constraint_is_violated():
    model = two_layer_model()
    attach_dual(model)
    with torch.no_grad():
        model[1].gamma.fill_(-0.5)
    lambdas = []
    for _ in range(5):
        dual_step(model, eta_dual=0.1, form="exact", rho=1.0)
        lambdas.append(dual_state(model)["lambda"])
    assert [l0 for l0, _ in lambdas] == pytest.approx([0.1 * k for k in range(1, 6)])
    assert [l1 for _, l1 in lambdas] == pytest.approx([0.05 * k for k in range(1, 6)])
    assert dual_penalty(model).item() == pytest.approx(0.5 * 1.0 + 0.25 * 0.5)
    with torch.no_grad():  # satisfied constraint: the multiplier stops rising
        model[0].gamma.zero_()
    dual_step(model, eta_dual=0.1, form="exact", rho=1.0)
    assert dual_state(model)["lambda"][0] == pytest.approx(0.5)


def test_resilient_slack_settles_where_it_pays_for_the_violation():
    model = two_layer_model()
    attach_dual(model)
    for _ in range(400):
        dual_step(model, eta_dual=0.1, form="resilient", rho=2.0)
    state = dual_state(model)
    # fixed point of lambda <- lambda + eta (|gamma| - lambda / rho) with |gamma| = 1: lambda = rho, u = 1
    assert state["lambda"] == pytest.approx([2.0, 2.0], rel=1e-6)
    assert state["slack"] == pytest.approx([1.0, 1.0], rel=1e-6)
    with pytest.raises(ValueError, match="dual form"):
        dual_step(model, 0.1, "approximate", 1.0)


def test_gammas_go_to_zero_on_exactly_symmetric_data():
    """Targets from an equivariant teacher: the constraint costs the task nothing, so gamma -> 0."""
    gen = torch.Generator().manual_seed(0)
    teacher = o3.Linear(IRREPS, IRREPS).to(F64)
    model = two_layer_model(1)
    for layer in relaxed_layers(model):
        nn.init.normal_(layer.free.weight, std=0.3)
    attach_dual(model)
    set_theta(model, 1.0)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    x = torch.randn(64, o3.Irreps(IRREPS).dim, generator=gen, dtype=F64)
    with torch.no_grad():
        y = teacher(teacher(x))
    for _ in range(200):
        loss = (model(x) - y).pow(2).mean() + dual_penalty(model)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        dual_step(model, eta_dual=0.5, form="exact", rho=1.0)
    state = dual_state(model)
    assert max(abs(g) for g in state["gamma"]) < 0.02
    assert min(state["lambda"]) > 1.0
