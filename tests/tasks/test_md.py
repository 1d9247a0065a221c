"""The md task: the GFN2-xTB generator, the MD17 / rMD17 loaders, forces, loss, group action, a tiny run."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from relaxbench.config import RunSpec, resolve_run, validate_config
from relaxbench.models import se3_transformer
from relaxbench.symmetry import equivariance_error
from relaxbench.tasks._xtb_md import EV_TO_KCAL_MOL, generate_md
from relaxbench.tasks.base import TaskError
from relaxbench.tasks.md import MD, read_md17
from relaxbench.train import train_run

TINY_MODEL = {
    "hidden": "4x0e + 2x0o + 2x1o + 2x1e + 2x2e",
    "keys": "4x0e + 2x1o",
    "layers": 2,
    "attr_dim": 4,
    "free_hidden": 8,
}
TINY_XTB = {
    "n_frames": 30,
    "n_trajectories": 2,
    "stride": 2,
    "equilibration_steps": 0,
    "n_train": 20,
    "n_val": 5,
}


def write_md17(path, n=6, layout="MD17", seed=0):
    """A small file in MD17's or rMD17's layout: ethanol with jittered positions, made-up energies and forces."""
    from ase.build import molecule

    atoms = molecule("CH3CH2OH")
    rng = np.random.default_rng(seed)
    z = atoms.get_atomic_numbers()
    r = atoms.positions[None] + 0.05 * rng.standard_normal((n, len(z), 3))
    e = -97_000.0 + rng.standard_normal(n)
    f = 10.0 * rng.standard_normal((n, len(z), 3))
    if layout == "MD17":
        np.savez(path, z=z, R=r, E=e[:, None], F=f, name=np.array("ethanol"))
    else:
        np.savez(path, nuclear_charges=z, coords=r, energies=e, forces=f)
    return {"z": z, "R": r, "E": e, "F": f}


def md_task(tmp_path, **params):
    path = tmp_path / "md17_ethanol.npz"
    write_md17(path)
    task = MD({"path": str(path), "n_train": 3, "n_val": 1, **params}, tmp_path / "data")
    task.prepare()
    return task


def test_generator_keeps_the_molecule_intact_and_forces_are_minus_the_xtb_energy_gradient():
    from ase import Atoms
    from ase.build import molecule
    from tblite.ase import TBLite

    data = generate_md(
        "CH3CH2OH",
        n_frames=4,
        n_trajectories=2,
        stride=5,
        equilibration_steps=10,
        temperature_k=500.0,
        timestep_fs=0.5,
        friction_per_fs=0.01,
        seed=0,
    )
    ref = molecule("CH3CH2OH")
    assert data["z"].tolist() == ref.get_atomic_numbers().tolist()
    assert data["R"].shape == (4, 9, 3) and data["E"].shape == (4, 1) and data["F"].shape == (4, 9, 3)
    d_ref = np.linalg.norm(ref.positions[:, None] - ref.positions[None], axis=-1)
    bonded = (d_ref < 1.6) & ~np.eye(9, dtype=bool)
    d = np.linalg.norm(data["R"][:, :, None] - data["R"][:, None], axis=-1)
    ratio = d[:, bonded] / d_ref[bonded]
    assert ratio.min() > 0.8 and ratio.max() < 1.3, "a bond broke or collapsed"
    assert np.all(d[:, ~np.eye(9, dtype=bool)] > 0.7)
    assert not np.allclose(data["R"][0], data["R"][1])  # frames move

    def energy(positions):  # kcal/mol
        atoms = Atoms(numbers=data["z"], positions=positions)
        atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
        return atoms.get_potential_energy() * EV_TO_KCAL_MOL

    h = 1e-3  # Angstrom
    for k in (0, 3):
        assert energy(data["R"][k]) == pytest.approx(data["E"][k, 0], abs=1e-4)
        for atom, axis in ((0, 0), (2, 2), (5, 1)):
            step = np.zeros_like(data["R"][k])
            step[atom, axis] = h
            fd = -(energy(data["R"][k] + step) - energy(data["R"][k] - step)) / (2 * h)
            assert fd == pytest.approx(data["F"][k, atom, axis], abs=0.02)


def test_generator_is_seeded():
    kwargs = dict(
        n_frames=2,
        n_trajectories=1,
        stride=2,
        equilibration_steps=0,
        temperature_k=500.0,
        timestep_fs=0.5,
        friction_per_fs=0.01,
    )
    a, b = generate_md("CH3CH2OH", seed=3, **kwargs), generate_md("CH3CH2OH", seed=3, **kwargs)
    c = generate_md("CH3CH2OH", seed=4, **kwargs)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.allclose(a["R"], c["R"])


@pytest.mark.parametrize("layout", ["MD17", "rMD17"])
def test_loaders_read_md17_and_rmd17_files(tmp_path, layout):
    path = tmp_path / f"{layout.lower()}_ethanol.npz"
    written = write_md17(path, n=8, layout=layout)
    read = read_md17(path)
    for key in ("z", "R", "E", "F"):
        np.testing.assert_array_equal(read[key], written[key])
    task = MD({"path": str(path), "n_train": 4, "n_val": 2, "seed": 1}, tmp_path / "data")
    task.prepare()
    splits = task.load_splits()
    assert [len(splits[s]) for s in ("train", "val", "test")] == [4, 2, 2]
    info = json.loads((tmp_path / "data" / "DONE.json").read_text())
    order = np.random.default_rng(1).permutation(8)
    train_idx = order[:4]
    assert info["energy_shift_kcal_mol"] == pytest.approx(written["E"][train_idx].mean())
    assert info["force_scale_kcal_mol_A"] == pytest.approx(np.sqrt((written["F"][train_idx] ** 2).mean()))
    train = splits["train"].tensors
    assert train["z"].dtype == torch.long and train["z"].shape == (4, 9)
    np.testing.assert_allclose(train["pos"].numpy(), written["R"][train_idx], rtol=1e-6)
    np.testing.assert_allclose(
        train["energy"].numpy() + info["energy_shift_kcal_mol"], written["E"][train_idx]
    )
    np.testing.assert_allclose(train["forces"].numpy(), written["F"][train_idx], rtol=1e-6)


def test_bad_files_and_parameters_raise_task_error(tmp_path):
    with pytest.raises(TaskError, match="does not exist"):
        MD({"path": str(tmp_path / "missing.npz")}, tmp_path / "a").prepare()
    np.savez(tmp_path / "wrong.npz", positions=np.zeros((2, 3, 3)))
    with pytest.raises(TaskError, match="expected MD17"):
        read_md17(tmp_path / "wrong.npz")
    np.savez(
        tmp_path / "bad.npz", z=np.ones(3), R=np.zeros((2, 4, 3)), E=np.zeros((2, 1)), F=np.zeros((2, 3, 3))
    )
    with pytest.raises(TaskError, match="inconsistent shapes"):
        read_md17(tmp_path / "bad.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(TaskError, match="cannot read"):
        read_md17(tmp_path / "text.npz")
    write_md17(tmp_path / "small.npz", n=6)
    with pytest.raises(TaskError, match="cannot be split"):
        MD({"path": str(tmp_path / "small.npz"), "n_train": 5, "n_val": 2}, tmp_path / "b").prepare()
    with pytest.raises(TaskError, match="unknown parameter"):
        MD({"temperature": 300}, tmp_path / "c")
    with pytest.raises(TaskError, match="does not know the molecule"):
        MD({**TINY_XTB, "molecule": "ethanol!"}, tmp_path / "d").prepare()
    with pytest.raises(TaskError, match="run prepare"):
        _ = MD({}, tmp_path / "e").force_scale


def test_predict_gives_minus_energy_gradient_with_a_graph_only_in_training(tmp_path):
    task = md_task(tmp_path)
    batch = task.load_splits()["train"].head(2)
    torch.manual_seed(0)
    model = se3_transformer.build(task.spec, **TINY_MODEL)
    model.eval()
    pred = task.predict(model, batch)
    assert pred["energy"].shape == (2,) and pred["forces"].shape == (2, 9, 3)
    assert not pred["energy"].requires_grad and not pred["forces"].requires_grad
    pos = batch["pos"].clone().requires_grad_(True)
    energy = task.force_scale * model({**batch, "pos": pos})
    (grad,) = torch.autograd.grad(energy.sum(), pos)
    torch.testing.assert_close(pred["forces"], -grad)
    torch.testing.assert_close(pred["energy"], energy.detach())
    model.train()
    pred = task.predict(model, batch)
    assert pred["forces"].requires_grad  # create_graph: the force loss trains the weights
    task.loss(pred, batch).backward()
    assert all(p.grad is not None for p in model.readout.parameters())


def test_loss_and_metrics_carry_the_weights_and_units(tmp_path):
    task = md_task(tmp_path, energy_weight=2.0, force_weight=80.0)
    batch = task.load_splits()["train"].head(3)
    pred = {"energy": batch["energy"] + 1.5, "forces": batch["forces"] - 2.0}
    values = task.metric_values(pred, batch)
    s = task.force_scale
    torch.testing.assert_close(values["energy_mae_kcal_mol"], torch.full((3,), 1.5))
    torch.testing.assert_close(values["force_mae_kcal_mol_A"], torch.full((3,), 2.0))
    expected = 2.0 * (1.5 / s) ** 2 + 80.0 * (2.0 / s) ** 2
    torch.testing.assert_close(values["loss"], torch.full((3,), expected))
    torch.testing.assert_close(task.loss(pred, batch), torch.tensor(expected))
    assert task.primary.name == "force_mae_kcal_mol_A" and task.primary.lower_is_better


class _Potential(nn.Module):
    """A test potential ``E = sum_atoms f(pos)`` (dimensionless)."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, batch):
        return self.f(batch["pos"]).sum(dim=(1, 2))


def test_group_action_rotates_forces_and_the_tester_flags_broken_symmetries(tmp_path):
    task = md_task(tmp_path)
    batch = {
        k: v.double() if v.is_floating_point() else v for k, v in task.load_splits()["train"].head(3).items()
    }
    elements = task.sample_group(3, torch.Generator().manual_seed(0))
    assert all(g.exact and g.data["t"].norm() > 0 for g in elements)

    def error(f):
        model = _Potential(f).eval()
        return equivariance_error(
            lambda b: task.predict(model, b), batch, elements, task.act, task.act_output
        ).exact

    centred = lambda p: p - p.mean(dim=1, keepdim=True)  # noqa: E731
    assert error(lambda p: centred(p).pow(2).sum(-1, keepdim=True).sqrt()) < 1e-12  # E(3)-invariant
    assert error(lambda p: p[..., :1].pow(2)) > 1e-2  # not rotation-invariant
    assert error(lambda p: p.pow(2)) > 1e-2  # rotation- but not translation-invariant
    g = elements[0]
    moved = task.act(g, batch)
    torch.testing.assert_close(
        moved["forces"], task.act_output(g, {"energy": None, "forces": batch["forces"]})["forces"]
    )
    torch.testing.assert_close(moved["z"], batch["z"][:, g.data["perm"]])


def test_two_epoch_training_run_on_generated_data_writes_an_ok_record(tmp_path):
    cfg = validate_config(
        {
            "name": "unit",
            "seeds": [0],
            "device": "cpu",
            "training": {
                "epochs": 2,
                "batch_size": 10,
                "equivariance_samples": 2,
                "equivariance_examples": 2,
            },
            "methods": {"relaxed": {}},
            "tasks": {"md": TINY_XTB},
            "models": {"se3": {"arch": "se3_transformer", "tasks": ["md"], "params": TINY_MODEL}},
        }
    )
    record = train_run(
        resolve_run(cfg, RunSpec("md", "se3", "relaxed", 0)), tmp_path / "run", tmp_path / "data"
    )
    assert record.status == "ok", record.reason
    assert record.metric == "force_mae_kcal_mol_A" and record.family == "se3_transformer"
    assert {"loss", "force_mae_kcal_mol_A", "energy_mae_kcal_mol"} == set(record.test)
    assert all(np.isfinite(v) for v in record.test.values())
    assert record.equiv_final_exact < 1e-6  # projected; float64, with e3nn coefficients built in float32
    assert record.params_free > 0 and record.steps == 4
    assert (tmp_path / "data" / "xtb_CH3CH2OH.npz").exists()
    assert MD(TINY_XTB, tmp_path / "data").prepared()
