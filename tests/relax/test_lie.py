"""The Lie-derivative penalty: zero exactly for equivariant maps, positive otherwise.

The published code laid the generator outputs out generator-major ([A_x x, A_y x, A_z x]) but split them
component-major; ``published_layout_ld`` reproduces that mistake so we can show the zero test would fail on it,
and it is the reference the ``relaxed_published_lie`` ablation's penalty is tested against.
"""

import pytest
import torch
from e3nn import o3

from relaxbench.families import irreps as irreps_family
from relaxbench.families import vector_neurons as vn_family
from relaxbench.families.so3 import irreps_generators, stacked_vector_generators
from relaxbench.relax import relaxation_penalty, set_theta, use_published_layout
from relaxbench.relax.lie import (
    lie_derivative_sq,
    make_finite_action,
    make_lie_action,
    published_layout_generators,
)

F64 = torch.float64
TOL = 1e-10


def so3_vector_generators() -> torch.Tensor:
    return irreps_generators(o3.Irreps("1o"))


def published_layout_ld(weight: torch.Tensor, x: torch.Tensor, gen_in, gen_out) -> torch.Tensor:
    """The published reshape bug: generator-major outputs split as if component-major."""
    w = lambda v: v @ weight.t()  # noqa: E731
    gx = torch.cat([x @ g.t() for g in gen_in], dim=-1)  # [B, G*d_in], generator-major
    wgx = torch.stack([w(c) for c in gx.reshape(x.shape[0], x.shape[1], len(gen_in)).unbind(-1)])
    wx = w(x)
    gwx = torch.stack([wx @ g.t() for g in gen_out])
    return (wgx - gwx).pow(2).sum() / x.shape[0]


def block_scalar_map(irreps_in: o3.Irreps, irreps_out: o3.Irreps, gen: torch.Generator) -> torch.Tensor:
    """A random equivariant dense map between irreps: one scalar weight per (in copy, out copy) of equal l."""
    lin = o3.Linear(irreps_in, irreps_out).to(F64)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen, dtype=F64))
    return lin(torch.eye(irreps_in.dim, dtype=F64)).t()  # [d_out, d_in]


@pytest.mark.parametrize(
    "irreps_in, irreps_out",
    [
        ("4x0e + 3x1o", "2x0e + 5x1o"),
        ("2x0e + 2x1o + 2x2e", "3x0e + 1x1o + 2x2e"),
        ("1x1o + 1x1e + 2x2o", "2x1o + 1x2o + 1x3e"),
    ],
)
def test_zero_for_equivariant_irreps_maps_positive_for_random(irreps_in, irreps_out):
    gen = torch.Generator().manual_seed(0)
    irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
    action = make_lie_action(irreps_generators(irreps_in), irreps_generators(irreps_out))
    x = torch.randn(16, irreps_in.dim, generator=gen, dtype=F64)
    w_eq = block_scalar_map(irreps_in, irreps_out, gen)
    assert lie_derivative_sq(lambda v: v @ w_eq.t(), x, action) < TOL
    w_rand = torch.randn(irreps_out.dim, irreps_in.dim, generator=gen, dtype=F64)
    assert lie_derivative_sq(lambda v: v @ w_rand.t(), x, action) > 1e-2


def test_zero_for_vector_neuron_maps_and_the_published_reshape_fails_that_test():
    gen = torch.Generator().manual_seed(1)
    c_in, c_out = 4, 3
    m = torch.randn(c_out, c_in, generator=gen, dtype=F64)
    w_eq = torch.kron(
        m, torch.eye(3, dtype=F64)
    )  # an equivariant VN linear map on (C, xyz) flattened vectors
    gin, gout = stacked_vector_generators(c_in), stacked_vector_generators(c_out)
    x = torch.randn(32, 3 * c_in, generator=gen, dtype=F64)
    ours = lie_derivative_sq(lambda v: v @ w_eq.t(), x, make_lie_action(gin, gout))
    assert ours < TOL
    assert published_layout_ld(w_eq, x, gin, gout) > 1e-2  # the published layout penalises it
    w_rand = torch.randn(3 * c_out, 3 * c_in, generator=gen, dtype=F64)
    assert lie_derivative_sq(lambda v: v @ w_rand.t(), x, make_lie_action(gin, gout)) > 1e-2


@pytest.mark.parametrize(
    "irreps_in, irreps_out", [("4x0e + 3x1o", "2x0e + 5x1o"), ("2x1o + 1x2e", "1x1o + 2x2e")]
)
def test_published_layout_penalty_reproduces_the_published_reshape(irreps_in, irreps_out):
    """The ablation's penalty equals the published reshape and is positive on an equivariant map."""
    gen = torch.Generator().manual_seed(4)
    irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
    gin, gout = irreps_generators(irreps_in), irreps_generators(irreps_out)
    x = torch.randn(8, irreps_in.dim, generator=gen, dtype=F64)
    published = make_lie_action(published_layout_generators(gin), gout)
    w_eq = block_scalar_map(irreps_in, irreps_out, gen)
    w_rand = torch.randn(irreps_out.dim, irreps_in.dim, generator=gen, dtype=F64)
    for w in (w_eq, w_rand):
        ours = lie_derivative_sq(lambda v, w=w: v @ w.t(), x, published)
        assert ours.item() == pytest.approx(published_layout_ld(w, x, gin, gout).item(), rel=1e-12)
    assert lie_derivative_sq(lambda v: v @ w_eq.t(), x, published) > 1e-2


def _equivariant_e3nn_layer(gen):
    irreps = o3.Irreps("3x0e + 2x1o")
    layer = irreps_family.relax(o3.Linear(irreps, irreps), True).to(F64)
    with torch.no_grad():
        layer.free.weight.copy_(block_scalar_map(irreps, irreps, gen))
    return layer, torch.randn(16, irreps.dim, generator=gen, dtype=F64)


def _equivariant_vn_layer(gen):
    layer = vn_family.relax(vn_family.VNLinear(3, 2), True).to(F64)
    with torch.no_grad():
        layer.free.weight.copy_(
            torch.kron(torch.randn(2, 3, generator=gen, dtype=F64), torch.eye(3, dtype=F64))
        )
    return layer, torch.randn(4, 3, 3, 5, generator=gen, dtype=F64)


@pytest.mark.parametrize(
    "make", [_equivariant_e3nn_layer, _equivariant_vn_layer], ids=["irreps", "vector_neurons"]
)
def test_published_layout_switch_on_a_relaxed_layer(make):
    """An equivariant free map: zero penalty in relaxbench's layout, positive in the published one."""
    torch.manual_seed(0)
    layer, x = make(torch.Generator().manual_seed(5))
    set_theta(layer, 1.0)
    layer.train()
    layer(x)
    assert relaxation_penalty(layer, eps=0.0)["lie"].item() < 1e-6
    use_published_layout(layer)
    layer(x)
    assert relaxation_penalty(layer, eps=0.0)["lie"].item() > 1e-1


def test_the_e3nn_penalty_sees_parity():
    """A free map that commutes with rotations but mixes 0e with 0o and 1o with 1e breaks O(3): the rotation
    generators miss it, the inversion catches it; every equivariant map still scores zero."""
    irreps = o3.Irreps("2x0e + 1x0o + 1x1o + 1x1e")
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(16, irreps.dim, generator=gen, dtype=F64)
    layer = irreps_family.relax(o3.Linear(irreps, irreps), True).to(F64)
    assert layer.gen_in.shape[0] == 4 and layer.n_lie == 3
    swap = torch.zeros(irreps.dim, irreps.dim, dtype=F64)
    swap[2, 0] = swap[0, 2] = 1.0  # 0e <-> 0o
    swap[3:6, 6:9] = swap[6:9, 3:6] = torch.eye(3, dtype=F64)  # 1o <-> 1e, the same vector
    rotations = make_lie_action(layer.gen_in[:3], layer.gen_out[:3])
    assert lie_derivative_sq(lambda v: v @ swap.t(), x, rotations) < TOL
    set_theta(layer, 1.0)
    layer.train()
    for weight, positive in ((swap, True), (block_scalar_map(irreps, irreps, gen), False)):
        with torch.no_grad():
            layer.free.weight.copy_(weight)
        layer(x)
        ld = layer.penalty_terms()[0]
        assert ld > 1.0 if positive else ld < TOL
    vectors = irreps_family.relax(
        o3.Linear("3x1o", "1x1o"), True
    )  # one parity in and out: the inversion adds nothing
    assert vectors.gen_in.shape[0] == 3


def test_generators_act_on_the_chosen_axis():
    """VN features [B, C, 3, N]: generators on axis 2 commute with a channel mixing map."""
    gen = torch.Generator().manual_seed(2)
    gens = so3_vector_generators()
    action = make_lie_action(gens, gens, dim_in=2, dim_out=2)
    m = torch.randn(5, 4, generator=gen, dtype=F64)
    x = torch.randn(2, 4, 3, 7, generator=gen, dtype=F64)
    assert lie_derivative_sq(lambda v: torch.einsum("oc,bcxn->boxn", m, v), x, action) < TOL
    bad = torch.randn(5, 4, 3, 3, generator=gen, dtype=F64)
    assert lie_derivative_sq(lambda v: torch.einsum("ocyx,bcxn->boyn", bad, v), x, action) > 1e-2


def test_finite_generators_for_a_discrete_group():
    """C_4 on a 4-cycle of features: circulant maps commute with the shift, others do not."""
    gen = torch.Generator().manual_seed(3)
    shift = lambda v: torch.roll(v, 1, dims=-1).unsqueeze(0)  # noqa: E731
    action = make_finite_action(shift, shift)
    c = torch.randn(4, generator=gen, dtype=F64)
    circulant = torch.stack([torch.roll(c, k) for k in range(4)])
    x = torch.randn(8, 4, generator=gen, dtype=F64)
    assert lie_derivative_sq(lambda v: v @ circulant.t(), x, action) < TOL
    dense = torch.randn(4, 4, generator=gen, dtype=F64)
    assert lie_derivative_sq(lambda v: v @ dense.t(), x, action) > 1e-2


def test_mismatched_generator_counts_are_rejected():
    with pytest.raises(ValueError, match="generators"):
        make_lie_action(torch.zeros(3, 2, 2), torch.zeros(2, 2, 2))
