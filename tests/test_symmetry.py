"""The equivariance tester: ~0 for an equivariant model, large for one that is not."""

import pytest
import torch
from torch import nn

from relaxbench.models import tfn
from relaxbench.symmetry import (
    EquivarianceError,
    GroupElement,
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
    assert err.exact == 0.0
    assert err.approx == pytest.approx(1.0)


def test_flatten_output_orders_dict_keys():
    out = flatten_output({"b": torch.ones(2, 1), "a": torch.zeros(2, 2)})
    assert out.tolist() == [[0, 0, 1], [0, 0, 1]]
