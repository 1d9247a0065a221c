"""The SE(3)-transformer: its layer norm, the relaxed free MLP and its Lie penalty, bad settings.

Equivariance per task kind, projection and the penalties of the whole model are the contract
(tests/test_contract.py).
"""

import math

import pytest
import torch
from e3nn import o3
from torch import nn

from relaxbench.families import irreps
from relaxbench.families.irreps import gate as gate_for
from relaxbench.families.irreps import irreps_generators
from relaxbench.families.so3 import parity_matrix
from relaxbench.models import se3_transformer
from relaxbench.models.se3_transformer import EquivariantLayerNorm
from relaxbench.relax import set_theta
from relaxbench.relax.free_mlp import RelaxedFreeMLP

F64 = torch.float64


@pytest.fixture(autouse=True)
def float64_default():
    """Build e3nn modules in float64, so their coupling coefficients are exact to float64 precision."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    yield
    torch.set_default_dtype(old)


def test_cartesian_vectors_are_e3nn_1o_vectors():
    """The free MLP sees the raw centred position; its generators treat it as ``1o``: the bases must agree."""
    rotation = o3.rand_matrix()
    torch.testing.assert_close(o3.Irreps("1o").D_from_matrix(rotation), rotation, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        torch.linalg.matrix_exp(0.3 * irreps_generators("1o")[2]),
        o3.matrix_z(torch.tensor(0.3)),
        atol=1e-12,
        rtol=0,
    )


def test_layer_norm_is_o3_equivariant():
    irreps = o3.Irreps("3x0e + 2x0o + 2x1o + 2x1e + 1x2e")
    norm = EquivariantLayerNorm(irreps)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(5, irreps.dim)
    for rotation in o3.rand_matrix(3):
        for parity in (1.0, -1.0):
            d = irreps.D_from_matrix(parity * rotation)
            torch.testing.assert_close(norm(x @ d.t()), norm(x) @ d.t(), atol=1e-12, rtol=0)


# --- the free MLP and its Lie derivative --------------------------------------------------------------------

IRREPS_Y = o3.Irreps("2x0e + 2x1o + 1x1e + 1x2e")
IRREPS_C = o3.Irreps("3x0e + 1x1o")  # node attribute, centred position


class _EquivariantFree(nn.Module):
    """A nonlinear *equivariant* free map ``[y, c] -> y`` (gated, with invariant biases)."""

    def __init__(self):
        super().__init__()
        gate = gate_for(IRREPS_Y)
        self.net = nn.Sequential(
            o3.Linear(IRREPS_Y + IRREPS_C, gate.irreps_in, biases=True),
            gate,
            o3.Linear(gate.irreps_out, IRREPS_Y, biases=True),
        )

    def forward(self, x):
        return self.net(x)


def relaxed_ff(lie_mode="lie", free=None, parity=None):
    layer = RelaxedFreeMLP(
        o3.Linear(IRREPS_Y, IRREPS_Y),
        IRREPS_Y.dim,
        IRREPS_C.dim,
        IRREPS_Y.dim,
        irreps_generators(IRREPS_Y + IRREPS_C),
        irreps_generators(IRREPS_Y),
        hidden=16,
        lie_mode=lie_mode,
        free=free,
        parity=parity,
    )
    if free is None:
        with torch.no_grad():
            layer.free[2].weight.mul_(100.0)  # undo the 0.01 init scale: a clearly non-equivariant map
    set_theta(layer, 1.0)
    y, c = torch.randn(4, 6, IRREPS_Y.dim), torch.randn(4, 6, IRREPS_C.dim)
    layer.train()(y, c)
    return layer


@pytest.mark.parametrize("lie_mode", ["lie", "finite"])
def test_lie_penalty_vanishes_exactly_for_an_equivariant_free_map(lie_mode):
    ld_eq, norm_eq = relaxed_ff(lie_mode, free=_EquivariantFree).penalty_terms()
    ld_random, _ = relaxed_ff(lie_mode).penalty_terms()
    assert ld_eq < 1e-10 and norm_eq > 0
    assert ld_random > 1e-3


def test_lie_penalty_is_the_derivative_of_the_finite_difference():
    """``ld`` equals ``sum_A ||d/dt [W(exp(tA) x) - exp(tA) W(x)]||^2`` (central differences), and the finite
    5-degree variant is ``angle^2`` times it to first order."""
    layer = relaxed_ff("lie")
    x = layer._last_input
    gen_in, gen_out = irreps_generators(IRREPS_Y + IRREPS_C), irreps_generators(IRREPS_Y)
    t = 1e-5

    def difference(a, s):
        return (
            layer.free(x @ torch.linalg.matrix_exp(s * gen_in[a]).t())
            - layer.free(x) @ torch.linalg.matrix_exp(s * gen_out[a]).t()
        )

    numeric = (
        sum(((difference(a, t) - difference(a, -t)) / (2 * t)).pow(2).sum() for a in range(3)) / x.shape[0]
    )
    ld, _ = layer.penalty_terms()
    assert float(ld) == pytest.approx(float(numeric), rel=1e-6)
    finite = RelaxedFreeMLP(
        layer.equivariant,
        IRREPS_Y.dim,
        IRREPS_C.dim,
        IRREPS_Y.dim,
        gen_in,
        gen_out,
        lie_mode="finite",
        free=lambda: layer.free,
    )
    finite._last_input = x
    ld_finite, _ = finite.penalty_terms()
    assert float(ld_finite) == pytest.approx(math.radians(5.0) ** 2 * float(ld), rel=0.1)


class _ParityBreakingFree(nn.Module):
    """``[y, c] -> y`` that commutes with every rotation but not with the inversion: it feeds the odd vectors
    of ``y`` (``1o``) into its even ones (``1e``), which e3nn's O(3) maps never do."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        y = x[..., : IRREPS_Y.dim]
        odd = IRREPS_Y.slices()[1]  # 2x1o
        even = IRREPS_Y.slices()[2]  # 1x1e
        out = torch.zeros_like(y)
        out[..., even] = self.scale * y[..., odd][..., :3] * y[..., :1].pow(2)
        return out


@pytest.mark.parametrize("lie_mode", ["lie", "finite"])
def test_the_free_mlp_penalty_sees_the_inversion(lie_mode):
    """A rotation-equivariant free map that breaks parity costs nothing to the rotation generators, and a
    positive amount once the layer knows the parities; an O(3)-equivariant one still costs nothing."""
    parity = (parity_matrix(IRREPS_Y + IRREPS_C).diagonal(), parity_matrix(IRREPS_Y).diagonal())
    rotations_only, layer = (
        relaxed_ff(lie_mode, free=_ParityBreakingFree),
        relaxed_ff(lie_mode, free=_ParityBreakingFree, parity=parity),
    )
    layer._last_input = rotations_only._last_input
    assert float(rotations_only.penalty_terms()[0]) < 1e-10
    assert float(layer.penalty_terms()[0]) > 1e-2
    assert float(relaxed_ff(lie_mode, free=_EquivariantFree, parity=parity).penalty_terms()[0]) < 1e-10
    built = irreps.relax(o3.Linear(IRREPS_Y, IRREPS_Y), True, free="mlp", context=IRREPS_C, lie_mode=lie_mode)
    assert torch.equal(built.parity_in, parity[0].float()) and torch.equal(
        built.parity_out, parity[1].float()
    )


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="divisible by heads"):
        se3_transformer.build({"kind": "molecule", "max_atomic_number": 9}, hidden="3x0e + 2x1o", heads=2)
    with pytest.raises(ValueError, match="unknown task kind"):
        se3_transformer.build({"kind": "images"})
    with pytest.raises(ValueError, match="lie_mode"):
        relaxed_ff("sideways")
