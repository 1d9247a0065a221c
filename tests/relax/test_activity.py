"""Relaxation activity: each relaxed layer's free-branch share theta ||W x|| / ||f_eq x|| of a training batch."""

import pytest
import torch
from e3nn import o3
from escnn import gspaces
from escnn import nn as enn
from torch import nn

from relaxbench.families import fields, irreps, vector_neurons
from relaxbench.families.so3 import irreps_generators
from relaxbench.methods import get_method, regulariser
from relaxbench.models import tfn
from relaxbench.relax import (
    FreeShareMeter,
    RelaxedLayer,
    make_lie_action,
    relaxation_penalty,
    relaxed_layers,
    set_theta,
)
from relaxbench.relax.dense import DenseRelaxedLinear
from relaxbench.relax.free_mlp import RelaxedFreeMLP
from relaxbench.train import free_share_peak

F64 = torch.float64
THETA = 0.4


def scaled_identity(scale: float, bias: bool = False) -> nn.Linear:
    lin = nn.Linear(3, 3, bias=bias).double()
    with torch.no_grad():
        lin.weight.copy_(scale * torch.eye(3, dtype=F64))
        if bias:
            lin.bias.zero_()
    return lin


def no_generators():
    return torch.zeros(1, 3, 3, dtype=F64)


def known_layers():
    """Layers with ``f_eq x = 2 x`` and ``W x = 0.5 x``: the share is ``theta / 4`` for every input."""
    generic = RelaxedLayer(
        scaled_identity(2.0), lambda: scaled_identity(0.5), make_lie_action(*[no_generators()] * 2)
    )
    dense = {}
    for fused in (True, False):
        eq = scaled_identity(2.0)
        layer = DenseRelaxedLinear(
            eq,
            3,
            3,
            no_generators(),
            no_generators(),
            bias=True,
            equivariant_matrix=(lambda e=eq: e.weight.t()) if fused else None,
        ).double()
        with torch.no_grad():
            layer.free.weight.copy_(0.5 * torch.eye(3, dtype=F64))
        dense[fused] = layer
    return {"generic": generic, "dense fused": dense[True], "dense": dense[False]}


@pytest.mark.parametrize("kind", ["generic", "dense fused", "dense"])
def test_a_known_free_map_gives_the_known_share(kind):
    layer = known_layers()[kind].train()
    set_theta(layer, THETA)
    assert layer.free_share() is None  # nothing seen since set_theta
    layer(torch.randn(5, 7, 3, dtype=F64))
    if kind.startswith("dense"):  # the fused forward reads the share from the input's moments
        assert (layer._fused_equivariant is not None) == (kind == "dense fused")
    assert float(layer.free_share()) == pytest.approx(THETA / 4, rel=1e-12)
    meter = FreeShareMeter(layer)
    meter.update()
    layer(torch.randn(2, 3, dtype=F64))
    meter.update()
    assert meter.means() == {"share:": pytest.approx(THETA / 4, rel=1e-12)}


def test_a_share_over_a_zero_equivariant_output_is_left_out_not_infinite():
    """The N-body baseline's drift ``w v`` starts at ``w = 0``: its first batch has ``f_eq x = 0``. That step's
    share is undefined (NaN) and the epoch's mean is taken over the other steps; all undefined gives NaN, and
    the run's peak skips it."""
    layer = RelaxedLayer(
        scaled_identity(0.0), lambda: scaled_identity(0.5), make_lie_action(*[no_generators()] * 2)
    )
    set_theta(layer.train(), THETA)
    meter = FreeShareMeter(layer)
    layer(torch.randn(4, 3, dtype=F64))
    assert torch.isnan(layer.free_share())
    meter.update()
    assert torch.isnan(torch.tensor(meter.means()["share:"]))
    with torch.no_grad():
        layer.equivariant.weight.copy_(2.0 * torch.eye(3, dtype=F64))
    layer(torch.randn(4, 3, dtype=F64))
    meter.update()
    assert meter.means() == {"share:": pytest.approx(THETA / 4, rel=1e-12)}
    history = [{"share:": float("nan")}, {"share:": 0.25}, {"share:": 0.1}]
    assert free_share_peak(history) == 0.25 and free_share_peak(history[:1]) is None


def direct_share(equivariant_out, free_out, theta=THETA):
    return theta * float(free_out.norm() / equivariant_out.norm())


def test_fused_e3nn_and_vector_neuron_shares_equal_the_direct_computation():
    """The fused layers compute the share from the input's second moment; it must equal the two branches run
    apart (bias included)."""
    torch.manual_seed(0)
    e3 = irreps.relax(o3.Linear("2x0e + 1x1o + 1x2e", "1x0e + 2x1o"), True, init_std=0.3).double().train()
    vn = vector_neurons.relax(vector_neurons.VNLinear(3, 4), True, init_std=0.3).double().train()
    with torch.no_grad():
        vn.free.bias.normal_()
    x_e3, x_vn = torch.randn(4, 6, 10, dtype=F64), torch.randn(2, 3, 3, 9, dtype=F64)
    cases = (  # (layer, input, the free map's view of it: VN's free map acts on [B, 3 C_in, P])
        (e3, x_e3, x_e3),
        (vn, x_vn, x_vn.reshape(2, 9, 9)),
    )
    for layer, x, free_view in cases:
        set_theta(layer, THETA)
        layer(x)
        expected = direct_share(layer.equivariant(x), layer.free(free_view))
        assert float(layer.free_share()) == pytest.approx(expected, rel=1e-10)
        # after the norm penalty of the same input, the share reuses its ||W x + b||^2: the same value
        relaxation_penalty(layer, lie=False, norm=True)
        assert layer._free_sq is not None
        assert float(layer.free_share()) == pytest.approx(expected, rel=1e-10)
        layer(x)  # a new input forgets it
        assert layer._free_sq is None


def test_steerable_conv_share_is_measured_on_the_penalty_examples():
    torch.manual_seed(0)
    gspace = gspaces.rot2dOnR2(4)
    in_type = enn.FieldType(gspace, 2 * [gspace.regular_repr])
    out_type = enn.FieldType(gspace, 3 * [gspace.regular_repr])
    conv = enn.R2Conv(in_type, out_type, 3, padding=1, recompute=True)
    layer = fields.relax(conv, True, init_std=0.3, penalty_examples=2).train()
    x = enn.GeometricTensor(torch.randn(5, in_type.size, 9, 9), in_type)
    set_theta(layer, THETA)
    layer(x)
    head = enn.GeometricTensor(x.tensor[:2], in_type)
    expected = direct_share(layer.equivariant(head).tensor, layer.free(head.tensor))
    assert float(layer.free_share()) == pytest.approx(expected, rel=1e-5)
    relaxation_penalty(layer)  # the norm term computes W x of the same examples: the share reuses it
    assert layer._free_head is not None
    assert float(layer.free_share()) == pytest.approx(expected, rel=1e-5)


def test_free_mlp_share_uses_both_outputs_of_its_forward():
    torch.manual_seed(0)
    h, c = o3.Irreps("4x0e + 2x1o"), o3.Irreps("1x1o")
    layer = RelaxedFreeMLP(
        o3.Linear(h, h), h.dim, c.dim, h.dim, irreps_generators(h + c), irreps_generators(h), hidden=8
    )
    layer.train()
    y, ctx = torch.randn(3, 5, h.dim), torch.randn(3, 5, c.dim)
    set_theta(layer, THETA)
    layer(y, ctx)
    expected = direct_share(layer.equivariant(y), layer.free(torch.cat([y, ctx], -1)))
    assert float(layer.free_share()) == pytest.approx(expected, rel=1e-5)


def test_no_share_in_eval_mode_or_without_recording():
    layer = known_layers()["dense fused"].eval()
    set_theta(layer, THETA)
    layer(torch.randn(4, 3, dtype=F64))
    assert layer.free_share() is None
    layer.train()
    layer.record_input = False
    layer(torch.randn(4, 3, dtype=F64))
    assert layer.free_share() is None


def test_theta_zero_gives_zero_shares_and_the_plain_model_bit_for_bit(tmp_path):
    from tests.relax.test_relaxed import SMALL, SPEC, tetris_task

    batch = {k: v.double() for k, v in tetris_task(tmp_path).load_splits()["test"].head(8).items()}
    batch["label"] = batch["label"].long()
    torch.manual_seed(0)
    plain = tfn.build(SPEC, relaxed=False, **SMALL).double().train()
    torch.manual_seed(0)
    relaxed = tfn.build(SPEC, relaxed=True, **SMALL).double().train()
    for layer in relaxed_layers(relaxed):
        nn.init.normal_(layer.free.weight, std=1.0)
    method = get_method("relaxed")
    meter = FreeShareMeter(relaxed)
    names = [f"share:{name}" for name, m in relaxed.named_modules() if isinstance(m, RelaxedLayer)]
    set_theta(relaxed, 0.0)
    out = relaxed(batch)
    regulariser(relaxed, method, 0.0)
    meter.update()
    assert torch.equal(out, plain(batch))
    assert meter.means() == dict.fromkeys(names, 0.0) and len(names) == 2
    set_theta(relaxed, THETA)
    relaxed(batch)
    regulariser(relaxed, method, THETA)
    meter.update()
    assert all(v > 0 for v in meter.means().values())
    assert FreeShareMeter(plain).means() == {}
