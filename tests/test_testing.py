"""The contract helpers fail where they must: each on a model that breaks the property it checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from relaxbench import testing
from relaxbench.families import irreps
from relaxbench.relax import RelaxedLayer, make_lie_action, set_theta
from relaxbench.tasks.tetris import SHAPES, Tetris

F64 = torch.float64


@pytest.fixture
def task(tmp_path):
    return Tetris(None, tmp_path)


@pytest.fixture
def batch():
    pos = torch.from_numpy(SHAPES - SHAPES.mean(axis=1, keepdims=True))  # [8, 4, 3], classes 0 and 1 chiral
    return {"pos": pos, "label": torch.arange(8)}


class Gram(nn.Module):
    """Logits from the sorted pairwise distances: O(3)- and permutation-invariant; ``relaxed`` adds a free
    linear map of the raw coordinates (rotations act on them by the so(3) generators)."""

    def __init__(self, relaxed=False, leak=0.0):
        super().__init__()
        self.head = nn.Linear(6, 8).double()
        self.leak = leak  # a non-invariant term, to break the plain model
        gens = irreps.irreps_generators("1o")
        self.mix = (
            RelaxedLayer(
                nn.Identity(), lambda: nn.Linear(3, 3, bias=False).double(), make_lie_action(gens, gens)
            )
            if relaxed
            else nn.Identity()
        )

    def forward(self, batch):
        pos = self.mix(batch["pos"])
        d = torch.cdist(pos, pos)
        iu = torch.triu_indices(4, 4, 1)
        feats = d[:, iu[0], iu[1]].sort(dim=1).values
        return self.head(feats) + self.leak * pos[:, :1, 0]  # the first point's x: not invariant


def test_tolerance_follows_the_dtype():
    assert testing.tolerance(F64) == pytest.approx(1.49e-8, rel=1e-2)
    assert testing.tolerance(torch.float32) == pytest.approx(3.45e-4, rel=1e-2)


def test_assert_equivariant_flags_a_model_that_is_not(task, batch):
    torch.manual_seed(0)
    testing.assert_equivariant(Gram(), task, batch)
    with pytest.raises(AssertionError, match="equivariance error"):
        testing.assert_equivariant(Gram(leak=1e-3), task, batch)


def test_assert_separates_tells_o3_from_so3(task, batch):
    torch.manual_seed(0)
    model = Gram()
    testing.assert_separates(
        model, task, batch, testing.mirrored(batch), separates=False
    )  # distances do not see mirrors
    with pytest.raises(AssertionError, match="does not tell the inputs apart"):
        testing.assert_separates(model, task, batch, testing.mirrored(batch))
    testing.assert_separates(Gram(leak=1.0), task, batch, testing.mirrored(batch, axis=0))


def test_projection_and_theta_checks_flag_a_free_branch_that_runs_at_theta_zero(task, batch):
    torch.manual_seed(0)
    plain = Gram()
    torch.manual_seed(0)
    relaxed = Gram(relaxed=True)
    testing.assert_projection_exact(plain, relaxed, task, batch)

    class Leaky(RelaxedLayer):  # adds the free map even at theta = 0
        def forward(self, x):
            self._record(x)
            return self.equivariant(x) + (self.theta + 1e-3) * self.free(x)

    relaxed.mix.__class__ = Leaky
    with pytest.raises(AssertionError, match="theta = 0 differs"):
        testing.assert_projection_exact(plain, relaxed, task, batch)
    with pytest.raises(AssertionError, match="ran at theta = 0"):
        testing.assert_theta_reaches_every_layer(relaxed, task, batch)


def test_breaking_and_penalty_checks(task, batch):
    torch.manual_seed(0)
    relaxed = Gram(relaxed=True)
    testing.assert_relaxed_breaks_symmetry(relaxed, task, batch)
    testing.assert_theta_reaches_every_layer(relaxed, task, batch)

    def scalar_multiple(layer):  # c * I commutes with every rotation
        with torch.no_grad():
            layer.free.weight.copy_(0.7 * torch.eye(3, dtype=F64))

    testing.assert_penalty_null_space(relaxed, task, batch, equivariant_free=scalar_multiple)

    def not_equivariant(layer):
        with torch.no_grad():
            layer.free.weight.copy_(torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=F64)))

    with pytest.raises(AssertionError, match="an equivariant free map is penalised"):
        testing.assert_penalty_null_space(relaxed, task, batch, equivariant_free=not_equivariant)
    set_theta(relaxed, 0.0)
