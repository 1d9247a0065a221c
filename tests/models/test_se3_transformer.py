"""The SE(3)-transformer: equivariance per task kind, projection, the relaxed free MLP and its Lie penalty."""

import math

import pytest
import torch
from e3nn import o3
from torch import nn

from relaxbench.families.irreps import gate as gate_for
from relaxbench.families.irreps import irreps_generators
from relaxbench.models import se3_transformer
from relaxbench.models.se3_transformer import EquivariantLayerNorm
from relaxbench.relax import relaxation_penalty, relaxed_layers, set_theta
from relaxbench.relax.free_mlp import RelaxedFreeMLP
from relaxbench.symmetry import GroupElement, equivariance_error, random_rotation_matrices
from relaxbench.tasks.tetris import Tetris
from tests.tasks.test_md import TINY_MODEL, md_task

F64 = torch.float64


@pytest.fixture(autouse=True)
def float64_default():
    """Build e3nn modules in float64, so their coupling coefficients are exact to float64 precision."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    yield
    torch.set_default_dtype(old)


def twins(spec, seed=0, **params):
    params = {**TINY_MODEL, **params}
    torch.manual_seed(seed)
    plain = se3_transformer.build(spec, relaxed=False, **params)
    torch.manual_seed(seed)
    relaxed = se3_transformer.build(spec, relaxed=True, **params)
    return plain, relaxed


def as_f64(batch):
    return {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}


@pytest.fixture(scope="module")
def molecule(tmp_path_factory):
    """``(task, plain, relaxed, batch)``: the md task on a small MD17-layout file and float64 twin models."""
    task = md_task(tmp_path_factory.mktemp("md"))
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    plain, relaxed = twins(task.spec)
    torch.set_default_dtype(old)
    return task, plain, relaxed, as_f64(task.load_splits()["train"].head(3))


def molecule_error(task, model, batch):
    elements = task.sample_group(4, torch.Generator().manual_seed(0))
    return equivariance_error(
        lambda b: task.predict(model, b), batch, elements, task.act, task.act_output
    ).exact


def test_energy_is_invariant_and_forces_equivariant(molecule):
    task, plain, relaxed, batch = molecule
    assert molecule_error(task, plain.eval(), batch) < 1e-10
    set_theta(relaxed, 1.0)  # theta > 0 and a random free map: not equivariant
    assert molecule_error(task, relaxed.eval(), batch) > 1e-5


def test_projected_relaxed_model_equals_plain_bit_for_bit(molecule):
    task, plain, relaxed, batch = molecule
    set_theta(relaxed, 0.0)
    for mode in (True, False):
        plain.train(mode), relaxed.train(mode)
        a, b = task.predict(plain, batch), task.predict(relaxed, batch)
        assert torch.equal(a["energy"], b["energy"]) and torch.equal(a["forces"], b["forces"])
    set_theta(relaxed, 0.5)
    assert not torch.equal(task.predict(relaxed, batch)["forces"], a["forces"])


def test_point_classification_is_rotation_invariant_and_tells_mirror_images_apart(tmp_path):
    task = Tetris({"n_train": 1, "n_val": 1, "n_test": 1}, tmp_path)
    task.prepare()
    batch = as_f64(task.load_splits()["train"].head(8))
    torch.manual_seed(0)
    plain = se3_transformer.build(task.spec, **{**TINY_MODEL, "layers": 3})  # 0o first appears in block 3
    elements = task.sample_group(4, torch.Generator().manual_seed(0))
    # 3.6e-10 of the logits' input-dependent part (1e-14 with two blocks): the exact (unjittered) achiral shapes
    # have odd features that vanish by symmetry, and the layer norms divide their rounding noise by
    # sqrt(mean square + 1e-5), about 300x per norm.
    assert equivariance_error(plain, batch, elements, task.act, task.act_output).exact < 1e-9
    mirrored = {**batch, "pos": batch["pos"] * torch.tensor([-1.0, 1.0, 1.0])}
    assert (plain(batch) - plain(mirrored)).abs().max() > 1e-6


def test_nbody_positions_are_equivariant():
    torch.manual_seed(1)
    model = se3_transformer.build({"kind": "nbody"}, **TINY_MODEL).eval()
    batch = {
        "loc": torch.randn(4, 5, 3),
        "vel": torch.randn(4, 5, 3),
        "charges": torch.randint(0, 2, (4, 5, 1)).double() * 2 - 1,
    }
    gen = torch.Generator().manual_seed(0)
    elements = [
        GroupElement(f"g{i}", True, {"R": r, "t": torch.randn(3, generator=gen, dtype=F64)})
        for i, r in enumerate(random_rotation_matrices(3, gen))
    ]

    def act(g, b):
        return {**b, "loc": b["loc"] @ g.data["R"].t() + g.data["t"], "vel": b["vel"] @ g.data["R"].t()}

    def act_output(g, out):
        return out @ g.data["R"].t() + g.data["t"]

    assert model(batch).shape == (4, 5, 3)
    assert equivariance_error(model, batch, elements, act, act_output).exact < 1e-10
    broken = lambda b: model(b) + b["loc"][..., :1]  # noqa: E731
    assert equivariance_error(broken, batch, elements, act, act_output).exact > 1e-2


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


def relaxed_ff(lie_mode="lie", free=None):
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


def test_penalty_reaches_only_the_free_branches(molecule):
    task, _, relaxed, batch = molecule
    set_theta(relaxed, 0.5)
    relaxed.train()
    relaxed.zero_grad()
    task.predict(relaxed, batch)
    penalty = relaxation_penalty(relaxed)
    assert len(list(relaxed_layers(relaxed))) == TINY_MODEL["layers"]
    (penalty["lie"] + penalty["norm"]).backward()
    free = {id(p) for layer in relaxed_layers(relaxed) for p in layer.free.parameters()}
    for p in relaxed.parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == (id(p) in free)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="divisible by heads"):
        se3_transformer.build({"kind": "molecule", "max_atomic_number": 9}, hidden="3x0e + 2x1o", heads=2)
    with pytest.raises(ValueError, match="unknown task kind"):
        se3_transformer.build({"kind": "images"})
    with pytest.raises(ValueError, match="lie_mode"):
        relaxed_ff("sideways")
