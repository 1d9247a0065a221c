"""The equivariance tester: ~0 for an equivariant model, large for one that is not."""

import pytest
import torch
from torch import nn

from relaxbench.models import tfn
from relaxbench.symmetry import (
    EquivarianceError,
    GroupElement,
    centred,
    equivariance_error,
    flatten_output,
    model_equivariance_error,
    random_rotation_matrices,
)
from relaxbench.tasks.tetris import Tetris

F64 = torch.float64


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    t = Tetris({"n_train": 1, "n_val": 1, "n_test": 4}, tmp_path_factory.mktemp("tetris"))
    t.prepare()
    return t


class FlatMLP(nn.Module):
    """Not invariant: an MLP on the raw flattened coordinates."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 8))

    def forward(self, batch):
        return self.net(batch["pos"].flatten(1))


def test_rotations_are_proper_and_orthonormal():
    r = random_rotation_matrices(64, torch.Generator().manual_seed(0))
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3, dtype=F64).expand(64, 3, 3), atol=1e-12)
    assert torch.allclose(torch.det(r), torch.ones(64, dtype=F64), atol=1e-12)


def test_equivariant_model_scores_zero_in_float64(task):
    torch.manual_seed(0)
    model = tfn.build(task.spec, hidden="4x0e + 4x0o + 2x1e + 2x1o", layers=2)
    batch = task.load_splits()["test"].head(32)
    err = model_equivariance_error(model, task, batch, n_elements=4, seed=0)
    assert isinstance(err, EquivarianceError)
    assert err.dtype == "float64"
    assert err.exact < 1e-10 and err.approx is None
    assert err.n_examples == 32 and err.n_elements == 4


def test_non_equivariant_model_scores_large(task):
    torch.manual_seed(0)
    err = model_equivariance_error(FlatMLP(), task, task.load_splits()["test"].head(32), n_elements=4, seed=0)
    assert err.exact > 0.05


def test_exact_and_approximate_elements_are_reported_apart():
    x = {"v": torch.randn(5, 3, dtype=F64)}
    identity = GroupElement("e", True)
    noisy = GroupElement("g", False)
    act = lambda g, b: b if g.exact else {"v": b["v"] * 2}  # noqa: E731
    err = equivariance_error(lambda b: b["v"], x, [identity, noisy], act, lambda g, y: y)
    assert err.exact == 0.0 and err.exact_abs == 0.0
    v = x["v"]
    assert err.approx_abs == pytest.approx(float(v.norm(dim=1).mean()), rel=1e-12)
    scale = float((v - v.mean(0)).pow(2).sum(1).mean().sqrt())
    assert err.scale == pytest.approx(scale, rel=1e-12)
    assert err.approx == pytest.approx(err.approx_abs / scale, rel=1e-12)


class OffsetMLP(FlatMLP):
    """FlatMLP scaled down by ``1e-6`` on top of a large constant logit offset (a head bias of ~1e3)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("offset", torch.linspace(1e3, 2e3, 8))

    def forward(self, batch):
        return self.offset + 1e-6 * super().forward(batch)


def test_constant_offset_does_not_dilute_the_error(task):
    """The old yardstick ||f(x)|| reads ~1e-9 for OffsetMLP (it would pass a 1e-6 equivariance test); the
    input-dependent part of its logits is all FlatMLP, so the error is FlatMLP's own, order 1."""
    torch.manual_seed(0)
    model = OffsetMLP()
    batch = task.load_splits()["test"].head(4)
    err = model_equivariance_error(model, task, batch, n_elements=4, seed=0)
    fx = model(batch).detach()
    old = err.exact_abs / float(fx.norm(dim=1).mean())
    assert old < 1e-8
    assert err.exact > 0.05
    torch.manual_seed(0)
    plain = model_equivariance_error(FlatMLP(), task, batch, n_elements=4, seed=0)
    assert err.exact == pytest.approx(plain.exact, rel=1e-6)


def test_centring_needs_two_examples():
    with pytest.raises(ValueError, match="at least 2 examples"):
        centred(torch.ones(1, 3))
    assert centred({"a": torch.tensor([[1.0], [3.0]])})["a"].tolist() == [[-1.0], [1.0]]


def test_flatten_output_orders_dict_keys():
    out = flatten_output({"b": torch.ones(2, 1), "a": torch.zeros(2, 2)})
    assert out.tolist() == [[0, 0, 1], [0, 0, 1]]


class TiedMLP(FlatMLP):
    """FlatMLP with a shared submodule and a tied weight, and a float buffer."""

    def __init__(self):
        super().__init__()
        self.again = nn.Sequential(self.net[2])
        self.head = nn.Linear(8, 8)
        self.tail = nn.Linear(8, 8)
        self.tail.weight = self.head.weight
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, batch):
        return self.tail(self.head(super().forward(batch))) * self.scale


def test_metric_leaves_the_model_as_it_was(task):
    torch.manual_seed(0)
    model = TiedMLP().train()

    def tensors():
        return dict(
            [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
        )

    before = {name: (t, t.detach().clone()) for name, t in tensors().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    err = model_equivariance_error(model, task, task.load_splits()["test"].head(8), n_elements=3, seed=0)
    assert err.dtype == "float64" and err.exact > 0.05
    assert model.training
    assert model.tail.weight is model.head.weight and model.again[0] is model.net[2]
    after = tensors()
    assert after.keys() == before.keys()
    for name, (original, value) in before.items():
        assert after[name] is original and torch.equal(original, value) and original.dtype == torch.float32, (
            name
        )
    model(task.load_splits()["train"].head(2)).sum().backward()  # still trains as float32
    optimizer.step()


def test_batched_metric_equals_one_call_per_element(task):
    torch.manual_seed(0)
    model = FlatMLP().double().eval()
    batch = {
        k: v.double() if v.is_floating_point() else v for k, v in task.load_splits()["test"].head(6).items()
    }
    elements = task.sample_group(5, torch.Generator().manual_seed(1))
    calls = []

    def f(b):
        calls.append(len(b["pos"]))
        return model(b)

    whole = equivariance_error(f, batch, elements, task.act, task.act_output)
    chunked = equivariance_error(f, batch, elements, task.act, task.act_output, max_batch=4)
    assert calls == [36, 4, 4, 4, 4, 4, 4, 4, 4, 4]
    fx = model(batch)
    scale = (fx - fx.mean(0)).pow(2).sum(1).mean().sqrt()
    expected = (
        torch.stack([(model(task.act(g, batch)) - task.act_output(g, fx)).norm(dim=1) for g in elements])
        .amax(0)
        .mean()
        / scale
    )
    assert whole.exact == pytest.approx(float(expected), rel=1e-12)
    assert chunked.exact == pytest.approx(float(expected), rel=1e-12)
