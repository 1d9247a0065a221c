"""Charged N-body: the generator against the reference vectors, the reference-file loader, the group action."""

import numpy as np
import pytest
import torch

from relaxbench.symmetry import equivariance_error
from relaxbench.tasks import _nbody_sim as sim
from relaxbench.tasks.base import TaskError
from relaxbench.tasks.nbody import NBody, reference_file
from tests.conftest import REPO

REFERENCE = REPO / "tests" / "data" / "nbody_charged_seed43_train_first8.npz"  # see tests/data/README.md
TINY = {"n_train": 3, "n_val": 2, "n_test": 2, "frame_in": 1, "frame_out": 2}


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as data:
        return {k: data[k] for k in data}


def test_generator_reproduces_the_reference_trajectories(reference):
    loc0, vel0, charges = sim.draw_initial_states(np.random.RandomState(43), 8)
    assert np.array_equal(charges, reference["charges"])
    assert np.array_equal(charges @ charges.transpose(0, 2, 1), reference["edges"])
    loc, vel = sim.integrate(loc0, vel0, charges, range(sim.N_FRAMES))
    assert loc.shape == reference["loc"].shape == (8, 49, 3, 5)
    # Same arithmetic as the reference: bit for bit on the reference's numpy/BLAS build, round-off elsewhere.
    np.testing.assert_allclose(loc[:, 0], reference["loc"][:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(vel[:, 0], reference["vel"][:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(loc, reference["loc"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(vel, reference["vel"], rtol=0, atol=1e-6)
    speeds = np.linalg.norm(vel0, axis=1)
    np.testing.assert_allclose(speeds, 0.5, rtol=1e-14)


def test_initial_positions_are_reflected_into_the_box():
    loc = np.array([[[6.0, -7.5, 1.0]]]).transpose(0, 2, 1)  # [1, 3, 1]: x over, y under, z inside
    vel = np.array([[[0.3, -0.2, 0.1]]]).transpose(0, 2, 1)
    sim._reflect_into_box(loc, vel)
    np.testing.assert_array_equal(loc[0, :, 0], [4.0, -2.5, 1.0])
    np.testing.assert_array_equal(vel[0, :, 0], [-0.3, 0.2, 0.1])


def direct_integration(loc, vel, q, n_steps):
    """One trajectory, one particle pair at a time: ``loc, vel [3, N]``, ``q [N]``; returns the states after
    each ``SAMPLE_FREQ`` steps."""
    loc, vel = loc.copy(), vel.copy()
    n = len(q)

    def force():
        f = np.zeros((3, n))
        for i in range(n):
            for j in range(n):
                if i != j:
                    r = loc[:, i] - loc[:, j]
                    f[:, i] += q[i] * q[j] * r / np.sqrt(r @ r) ** 3
        return np.clip(f, -sim.MAX_FORCE, sim.MAX_FORCE)

    saved = []
    vel += sim.DT * force()
    for step in range(1, n_steps + 1):
        loc += sim.DT * vel
        if step % sim.SAMPLE_FREQ == 0:
            saved.append(loc.copy())
        vel += sim.DT * force()
    return np.stack(saved)


def test_batched_integration_matches_a_direct_step_by_step_one():
    loc0, vel0, charges = sim.draw_initial_states(np.random.RandomState(7), 5)
    loc, _ = sim.integrate(loc0, vel0, charges, [0, 3])
    for t in (0, 4):  # a couple of trajectories, the second from the middle of the batch
        direct = direct_integration(loc0[t], vel0[t], charges[t, :, 0], 4 * sim.SAMPLE_FREQ)
        np.testing.assert_allclose(loc[t], direct[[0, 3]], rtol=0, atol=1e-10)


def test_generated_splits_follow_the_reference_stream(reference, tmp_path):
    task = NBody({**TINY, "frame_in": 0, "frame_out": 3}, tmp_path)
    task.prepare()
    assert task.prepared()
    splits = task.load_splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 3, "val": 2, "test": 2}
    train = splits["train"].tensors
    assert set(train) == {"loc", "vel", "charges", "target"}
    assert train["loc"].shape == (3, 5, 3) and train["charges"].shape == (3, 5, 1)
    expect = lambda a: torch.from_numpy(a.transpose(0, 2, 1)).float()  # noqa: E731
    assert torch.equal(train["loc"], expect(reference["loc"][:3, 0]))
    assert torch.equal(train["vel"], expect(reference["vel"][:3, 0]))
    assert torch.equal(train["target"], expect(reference["loc"][:3, 3]))
    # validation and test come after all 10,000 training trajectories of the stream
    assert not torch.equal(splits["val"].tensors["loc"], train["loc"][:2])


def write_reference_files(folder, n=4, frames=4, skip=()):
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        loc = rng.standard_normal((n, frames, 3, 5))
        arrays[split] = loc
        files = {
            "loc": loc,
            "vel": rng.standard_normal((n, frames, 3, 5)),
            "charges": rng.choice([-1.0, 1.0], (n, 5, 1)),
            "edges": np.zeros((n, 5, 5)),
        }
        for key, value in files.items():
            if (key, split) not in skip:
                np.save(reference_file(folder, key, split), value)
    return arrays


def test_path_reads_reference_layout_files(tmp_path):
    folder = tmp_path / "ref"
    folder.mkdir()
    arrays = write_reference_files(folder)
    task = NBody({**TINY, "path": str(folder)}, tmp_path / "cache")
    task.prepare()
    splits = task.load_splits()
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        t = splits[split].tensors
        assert len(splits[split]) == n
        expect = torch.from_numpy(arrays[split][:n, 1].transpose(0, 2, 1)).float()
        assert torch.equal(t["loc"], expect)
        assert torch.equal(t["target"], torch.from_numpy(arrays[split][:n, 2].transpose(0, 2, 1)).float())


@pytest.mark.parametrize(
    "skip, params, message",
    [
        ({("vel", "val")}, {}, "cannot read"),
        ((), {"n_train": 5}, "holds only 4"),
        ((), {"frame_out": 4}, "expected [n, frames > 4"),
    ],
)
def test_path_with_missing_or_wrong_files_is_a_task_error(tmp_path, skip, params, message):
    folder = tmp_path / "ref"
    folder.mkdir()
    write_reference_files(folder, skip=skip)
    task = NBody({**TINY, **params, "path": str(folder)}, tmp_path / "cache")
    with pytest.raises(TaskError, match=message.replace("[", r"\[")):
        task.prepare()
    assert not task.prepared()


def test_bad_parameters_are_rejected(tmp_path):
    with pytest.raises(TaskError, match="not a folder"):
        NBody({"path": str(tmp_path / "nope")}, tmp_path).prepare()
    with pytest.raises(TaskError, match="n_train"):
        NBody({"n_train": 10_001}, tmp_path)
    with pytest.raises(TaskError, match="frame_in"):
        NBody({"frame_in": 40, "frame_out": 40}, tmp_path)
    with pytest.raises(TaskError, match="unknown parameter"):
        NBody({"n_balls": 10}, tmp_path)


def random_batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "loc": torch.randn(b, 5, 3, generator=g, dtype=torch.float64),
        "vel": torch.randn(b, 5, 3, generator=g, dtype=torch.float64),
        "charges": torch.randint(0, 2, (b, 5, 1), generator=g).double() * 2 - 1,
        "target": torch.randn(b, 5, 3, generator=g, dtype=torch.float64),
    }


def test_group_action_and_the_tester(tmp_path):
    task = NBody({}, tmp_path)
    batch = random_batch()
    elements = task.sample_group(3, torch.Generator().manual_seed(1))
    assert all(g.exact for g in elements)

    def error(f):
        return equivariance_error(f, batch, elements, task.act, task.act_output).exact

    assert error(lambda b: b["loc"] + 0.7 * b["vel"] * b["charges"]) < 1e-14
    assert (
        error(lambda b: b["loc"] * torch.tensor([1.0, 2.0, 3.0], dtype=b["loc"].dtype)) > 0.1
    )  # not rotations
    assert error(lambda b: 2 * b["loc"]) > 0.1  # not translations
    assert error(lambda b: b["loc"] + b["vel"][:, :1]) > 0.1  # not permutations
    acted = task.act(elements[0], batch)
    g = elements[0]
    assert torch.equal(acted["target"], task.act_output(g, batch["target"]))
    assert torch.equal(acted["charges"], batch["charges"][:, g.data["perm"]])


def test_loss_and_metric(tmp_path):
    task = NBody({}, tmp_path)
    batch = random_batch()
    pred = batch["target"] + 0.5
    values = task.metric_values(pred, batch)
    assert torch.allclose(values["mse_pos"], torch.full((4,), 0.25, dtype=torch.float64))
    assert task.loss(pred, batch).item() == pytest.approx(0.25)
    assert task.primary.name == "mse_pos" and task.primary.unit == "length^2"
