"""The shapes task: the synthetic generator, the ModelNet40 HDF5 loader, and the group action."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from relaxbench.symmetry import equivariance_error
from relaxbench.tasks._shapes_gen import CLASSES, generate_split, sample_class
from relaxbench.tasks.base import TaskError
from relaxbench.tasks.shapes import Shapes

TINY = {"n_points": 40, "n_train_per_class": 3, "n_val_per_class": 2, "n_test_per_class": 2}


def _prepared(tmp_path, **params) -> Shapes:
    task = Shapes({**TINY, **params}, tmp_path / "data")
    task.prepare()
    return task


def test_generator_is_seeded():
    a = generate_split(2, 50, 0.01, np.random.default_rng(3))
    b = generate_split(2, 50, 0.01, np.random.default_rng(3))
    c = generate_split(2, 50, 0.01, np.random.default_rng(4))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.allclose(a[0], c[0])
    assert list(a[1]) == [k for k in range(len(CLASSES)) for _ in range(2)]


def test_clouds_are_centred_in_the_unit_ball_and_rotated():
    pos, _ = generate_split(4, 200, 0.01, np.random.default_rng(0))
    assert np.abs(pos.mean(axis=1)).max() < 1e-12
    np.testing.assert_allclose(np.linalg.norm(pos, axis=-1).max(axis=1), 1.0, atol=1e-12)
    # cylinders are generated along z; after the random rotation their axes point anywhere
    cylinders = pos[CLASSES.index("cylinder") * 4 : (CLASSES.index("cylinder") + 1) * 4]
    axes = [np.linalg.eigh(np.cov(c.T))[1][:, -1] for c in cylinders]
    assert np.abs(np.array(axes)[:, 2]).min() < 0.9


def test_surface_samples_are_area_uniform():
    rng = np.random.default_rng(0)
    # torus (R = 1): with v the angle around the tube, the area element is (1 + r cos v), so E[cos v] = r / 2
    torus = sample_class("torus", 1, 100_000, rng)[0]
    ring = np.hypot(torus[:, 0], torus[:, 1]) - 1.0
    r = np.hypot(ring, torus[:, 2])
    assert np.ptp(r) < 1e-9
    assert abs(np.mean(ring / r) - r[0] / 2) < 0.01
    # cube: each face (|coordinate| = 1/2 on one axis) carries a sixth of the points
    cube = sample_class("cube", 1, 60_000, rng)[0]
    on_face = np.isclose(np.abs(cube), 0.5).argmax(axis=1)
    np.testing.assert_allclose(np.bincount(on_face, minlength=3) / len(cube), 1 / 3, atol=0.01)


def test_helix_pair_are_mirror_images():
    left = sample_class("helix_left", 2, 100, np.random.default_rng(5))
    right = sample_class("helix_right", 2, 100, np.random.default_rng(5))
    np.testing.assert_array_equal(left, right * np.array([1.0, 1.0, -1.0]))
    # handedness: the tube winds counter-clockwise (seen from +z) as z rises for the right helix
    angle = np.unwrap(np.arctan2(right[0, :, 1], right[0, :, 0])[np.argsort(right[0, :, 2])])
    assert np.polyfit(np.sort(right[0, :, 2]), angle, 1)[0] > 0


def test_task_prepares_and_loads_splits(tmp_path):
    task = _prepared(tmp_path)
    splits = task.load_splits()
    n_classes = len(CLASSES)
    assert {s: len(v) for s, v in splits.items()} == {
        "train": 3 * n_classes,
        "val": 2 * n_classes,
        "test": 2 * n_classes,
    }
    assert splits["train"].tensors["pos"].shape == (3 * n_classes, 40, 3)
    assert splits["train"].tensors["pos"].dtype == torch.float32
    assert splits["test"].tensors["label"].dtype == torch.int64
    assert task.spec == {"kind": "point_classification", "n_points": 40, "num_classes": n_classes}
    done = json.loads((tmp_path / "data" / "DONE.json").read_text())
    assert done["class_names"] == list(CLASSES) and done["num_classes"] == n_classes and task.prepared()
    with h5py.File(tmp_path / "data" / "test.h5") as f:  # ModelNet40's layout
        assert f["data"].shape == (2 * n_classes, 40, 3) and f["label"].shape == (2 * n_classes, 1)
    # train and test clouds differ (one stream), and are rotated
    assert not torch.equal(splits["train"].tensors["pos"][:2], splits["test"].tensors["pos"][:2])


@pytest.mark.parametrize(
    "params, message",
    [
        ({"colour": 1}, "unknown parameter"),
        ({"dataset": "shapenet"}, "at 'dataset': 'shapenet' is not one of"),
        ({"dataset": "modelnet40"}, "needs 'path'"),
        ({"n_points": 0}, "n_points"),
        ({"n_val_per_class": 0}, "n_val_per_class"),
        ({"jitter": -0.1}, "jitter"),
        ({"dataset": "modelnet40", "path": "/x", "n_points": 4096}, "2048 points"),
    ],
)
def test_bad_parameters_are_rejected(tmp_path, params, message):
    with pytest.raises(TaskError, match=message):
        Shapes(params, tmp_path)


def _write_modelnet40(folder, sizes, n_points=64, seed=0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Small files in ModelNet40's layout; returns the raw ``(data, label)`` per file name."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    written = {}
    for name, n in sizes.items():
        data = rng.standard_normal((n, n_points, 3)).astype(np.float32)
        label = rng.integers(0, 40, (n, 1)).astype(np.uint8)
        with h5py.File(folder / f"ply_data_{name}.h5", "w") as f:
            f.create_dataset("data", data=data)
            f.create_dataset("label", data=label)
        written[name] = (data, label)
    return written


def _fingerprint(clouds: np.ndarray) -> np.ndarray:
    """Rotation-invariant summary of each cloud: sorted lengths of its points."""
    return np.sort(np.linalg.norm(clouds.astype(np.float64), axis=-1), axis=1)


def test_modelnet40_loader_reads_h5_files(tmp_path):
    root = tmp_path / "raw" / "modelnet40_ply_hdf5_2048"
    raw = _write_modelnet40(root, {"train0": 12, "train1": 8, "test0": 5, "test1": 4})
    (root / "shape_names.txt").write_text("\n".join(f"class{i}" for i in range(40)) + "\n")
    params = {"dataset": "modelnet40", "path": str(tmp_path / "raw"), "n_points": 16, "val_fraction": 0.25}
    task = Shapes(params, tmp_path / "data")
    task.prepare()
    splits = task.load_splits()
    assert {s: len(v) for s, v in splits.items()} == {"train": 15, "val": 5, "test": 9}
    assert task.spec["num_classes"] == 40
    assert json.loads((tmp_path / "data" / "DONE.json").read_text())["class_names"][:2] == [
        "class0",
        "class1",
    ]
    # every loaded cloud is a rotated copy of the first 16 points of a raw shape, with its label
    raw_train = np.concatenate([raw["train0"][0], raw["train1"][0]])[:, :16]
    raw_labels = np.concatenate([raw["train0"][1], raw["train1"][1]])[:, 0]
    raw_prints = _fingerprint(raw_train)
    seen = []
    for split in ("train", "val"):
        pos, label = splits[split].tensors["pos"].numpy(), splits[split].tensors["label"].numpy()
        for cloud, lab in zip(_fingerprint(pos), label):
            match = np.flatnonzero(np.abs(raw_prints - cloud).max(axis=1) < 1e-5)
            assert len(match) == 1 and raw_labels[match[0]] == lab
            seen.append(match[0])
    assert sorted(seen) == list(range(20))  # train and val partition the training files
    test_raw = np.concatenate([raw["test0"][0], raw["test1"][0]])[:, :16]
    np.testing.assert_allclose(
        _fingerprint(splits["test"].tensors["pos"].numpy()), _fingerprint(test_raw), atol=1e-5
    )
    assert not np.allclose(splits["test"].tensors["pos"].numpy(), test_raw, atol=1e-3)  # rotated
    # seeded: preparing again gives the same files
    again = Shapes(params, tmp_path / "again")
    again.prepare()
    assert torch.equal(again.load_splits()["val"].tensors["pos"], splits["val"].tensors["pos"])


def test_modelnet40_missing_files_raise_task_error(tmp_path):
    task = Shapes({"dataset": "modelnet40", "path": str(tmp_path / "nowhere")}, tmp_path / "data")
    with pytest.raises(TaskError, match="no ModelNet40 files"):
        task.prepare()
    _write_modelnet40(tmp_path / "few", {"train0": 3, "test0": 2}, n_points=8)
    task = Shapes({"dataset": "modelnet40", "path": str(tmp_path / "few"), "n_points": 16}, tmp_path / "d2")
    with pytest.raises(TaskError, match="points per shape"):
        task.prepare()


def test_group_action_and_the_tester_flags_non_invariant_functions(tmp_path):
    task = Shapes(TINY, tmp_path)
    pos = torch.randn(3, 40, 3, dtype=torch.float64)
    batch = {"pos": pos, "label": torch.zeros(3, dtype=torch.long)}
    elements = task.sample_group(4, torch.Generator().manual_seed(0))
    assert all(g.exact for g in elements)
    moved = task.act(elements[0], batch)["pos"]
    rotation, perm = elements[0].data["R"], elements[0].data["perm"]
    torch.testing.assert_close(moved, (pos @ rotation.T)[:, perm])

    def gram_spectrum(b):  # invariant under rotations and permutations
        centred = b["pos"] - b["pos"].mean(1, keepdim=True)
        return torch.linalg.eigvalsh(centred.transpose(1, 2) @ centred)

    def first_point(b):  # neither
        return b["pos"][:, 0]

    ok = equivariance_error(gram_spectrum, batch, elements, task.act, task.act_output)
    bad = equivariance_error(first_point, batch, elements, task.act, task.act_output)
    assert ok.exact < 1e-12 and ok.approx is None
    assert bad.exact > 0.1


def test_loss_and_metrics(tmp_path):
    task = Shapes(TINY, tmp_path)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    batch = {"label": torch.tensor([0, 0, 0])}
    values = task.metric_values(logits, batch)
    torch.testing.assert_close(values["error_rate"], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(values["loss"].mean(), task.loss(logits, batch))
    assert task.primary.name == "error_rate" and task.primary.lower_is_better
