"""Rotated-image tasks: splits, rotations, group action, and the real-file loaders on files written here."""

from __future__ import annotations

import gzip
import math
import struct

import numpy as np
import pytest
import torch

from relaxbench.tasks._images import paste_centred, rotate, rotate_copies, stratified_take
from relaxbench.tasks.base import TaskError
from relaxbench.tasks.rotdigits import RotDigits
from relaxbench.tasks.rotfmnist import RotFashionMNIST
from relaxbench.tasks.rotmnist import AMAT_FILES, RotMNIST

SMALL = {"n_train": 60, "n_val": 30, "n_test": 40, "test_rotations": 3}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    task = RotDigits(SMALL, tmp_path_factory.mktemp("rotdigits"))
    task.prepare()
    return task, task.load_splits()


def test_rotdigits_split_sizes_and_stratification(digits):
    task, splits = digits
    assert {s: len(v) for s, v in splits.items()} == {"train": 60, "val": 30, "test": 120}
    for name, split in splits.items():
        image, label = split.tensors["image"], split.tensors["label"]
        assert image.shape[1:] == (1, 29, 29) and image.dtype == torch.float32 and label.dtype == torch.int64
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        counts = np.bincount(label.numpy(), minlength=10)
        per_source = counts // (3 if name == "test" else 1)
        assert per_source.max() - per_source.min() <= 1, (name, counts)  # stratified
    assert task.spec == {"kind": "image_classification", "channels": 1, "size": 29, "num_classes": 10}


def test_rotdigits_test_split_holds_several_rotations_of_each_digit(digits):
    _, splits = digits
    image, label = splits["test"].tensors["image"], splits["test"].tensors["label"]
    copies, labels = image.view(40, 3, 29, 29), label.view(40, 3)
    assert (labels == labels[:, :1]).all()
    assert ((copies[:, 0] - copies[:, 1]).abs().amax((1, 2)) > 0.1).double().mean() > 0.9  # different angles
    mass = copies.sum((2, 3))
    assert torch.allclose(mass, mass[:, :1], rtol=0.03)  # same digit, same ink


def test_changing_n_train_keeps_validation_and_test(tmp_path, digits):
    _, splits = digits
    other = RotDigits({**SMALL, "n_train": 100}, tmp_path)
    other.prepare()
    other_splits = other.load_splits()
    assert len(other_splits["train"]) == 100
    for name in ("val", "test"):
        assert torch.equal(other_splits[name].tensors["label"], splits[name].tensors["label"])


def test_stratified_take_is_disjoint_and_checks_sizes():
    labels = np.repeat(np.arange(10), 10)
    taken, rest = stratified_take(np.arange(100), labels, 30, seed=0)
    assert len(taken) == 30 and len(rest) == 70 and not set(taken) & set(rest)
    assert (np.bincount(labels[taken]) == 3).all()
    with pytest.raises(TaskError, match="cannot take"):
        stratified_take(np.arange(100), labels, 95, seed=0)


def test_rotation_keeps_digits_on_the_canvas():
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    source = paste_centred(zoom(load_digits().images[:200] / 16.0, (1, 21 / 8, 21 / 8), order=1), 29)
    yy, xx = np.meshgrid(np.arange(29) - 14, np.arange(29) - 14, indexing="ij")
    outside_disc = np.hypot(yy, xx) > 14.5
    assert source[:, outside_disc].sum() == 0.0  # every pixel of a pasted digit lies in the inscribed disc
    rotated, _ = rotate_copies(source, np.zeros(200, dtype=np.int64), 1, torch.Generator().manual_seed(0))
    kept = rotated.sum((1, 2, 3)) / source.sum((1, 2))
    assert kept.min() > 0.98 and kept.max() < 1.02


def test_rotate_by_quarter_turn_matches_rot90_and_identity():
    x = torch.rand(3, 1, 9, 9, dtype=torch.float64)
    tol = 100 * torch.finfo(torch.float64).eps
    assert torch.allclose(rotate(x, math.pi / 2), torch.rot90(x, 1, dims=(-2, -1)), atol=tol)
    assert torch.allclose(rotate(x, 0.0), x, atol=tol)


def test_group_elements_and_action(digits):
    task, splits = digits
    elements = task.sample_group(6, torch.Generator().manual_seed(0))
    assert [g.exact for g in elements] == [True, False] * 3
    assert [g.data["k"] for g in elements if g.exact] == [1, 2, 3]
    batch = splits["test"].head(4)
    moved = task.act(elements[0], batch)
    assert torch.equal(moved["image"], torch.rot90(batch["image"], 1, dims=(-2, -1)))
    assert torch.equal(moved["label"], batch["label"])
    logits = torch.randn(4, 10)
    assert task.act_output(elements[1], logits) is logits


def test_metrics_and_loss(digits):
    task, splits = digits
    batch = splits["val"].head(5)
    pred = torch.nn.functional.one_hot(batch["label"], 10).double() * 5
    pred[0] = pred[0].roll(1)
    values = task.metric_values(pred, batch)
    assert values["error_rate"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert torch.equal(values["accuracy"], 1 - values["error_rate"])
    assert task.primary.name == "error_rate" and task.primary.lower_is_better


def test_bad_parameters_are_refused(tmp_path):
    with pytest.raises(TaskError, match="odd"):
        RotDigits({"canvas": 28}, tmp_path)
    with pytest.raises(TaskError, match="unknown parameter"):
        RotDigits({"angle": 3}, tmp_path)
    with pytest.raises(TaskError, match="exceeds"):
        RotDigits({"n_train": 1700}, tmp_path).prepare()


# --- real-file loaders, on small files written here ----------------------------------------------------------


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def _write_mnist_idx(folder, n_train: int, n_test: int, compress: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        _write_idx(folder / f"{part}-images-idx3-ubyte", images, compress)
        _write_idx(folder / f"{part}-labels-idx1-ubyte", labels, compress)
        arrays[part] = images
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_rotfmnist_reads_idx_files(tmp_path, compress):
    source = tmp_path / "fmnist"
    source.mkdir()
    _write_mnist_idx(source, 60, 30, compress)
    params = {"path": str(source), "n_train": 30, "n_val": 20, "n_test": 20, "test_rotations": 2}
    task = RotFashionMNIST(params, tmp_path / "data")
    task.prepare()
    splits = task.load_splits()
    assert {s: len(v) for s, v in splits.items()} == {"train": 30, "val": 20, "test": 40}
    assert splits["train"].tensors["image"].shape[1:] == (1, 29, 29)
    assert (np.bincount(splits["val"].tensors["label"].numpy()) == 2).all()


def test_rotfmnist_missing_files_tell_how_to_install(tmp_path):
    with pytest.raises(TaskError, match="apt-get install dataset-fashion-mnist"):
        RotFashionMNIST({"path": str(tmp_path)}, tmp_path / "data").prepare()


def test_rotfmnist_rejects_a_corrupt_idx_file(tmp_path):
    source = tmp_path / "fmnist"
    source.mkdir()
    _write_mnist_idx(source, 20, 20, compress=False)
    (source / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(TaskError, match="not a valid IDX"):
        RotFashionMNIST(
            {"path": str(source), "n_train": 10, "n_val": 10, "n_test": 10}, tmp_path / "d"
        ).prepare()


def _write_amat(path, images: np.ndarray, labels: np.ndarray) -> None:
    rows = np.concatenate([images.reshape(len(images), -1), labels[:, None]], axis=1)
    np.savetxt(path, rows, fmt="%.6f")


def test_rotmnist_reads_amat_files(tmp_path, monkeypatch):
    monkeypatch.setattr(RotMNIST, "amat_train_rows", 12)
    rng = np.random.default_rng(1)
    train_valid = rng.random((15, 28, 28)).astype(np.float32)
    test = rng.random((7, 28, 28)).astype(np.float32)
    _write_amat(tmp_path / AMAT_FILES["train_valid"], train_valid, np.arange(15) % 10)
    _write_amat(tmp_path / AMAT_FILES["test"], test, np.arange(7) % 10)
    task = RotMNIST({"path": str(tmp_path), "n_train": 10, "n_val": None}, tmp_path / "data")
    task.prepare()
    splits = task.load_splits()
    assert {s: len(v) for s, v in splits.items()} == {"train": 10, "val": 3, "test": 7}
    # rows are used as they are (already rotated), pasted on the 29 canvas: last row and column are zero
    image = splits["val"].tensors["image"]
    np.testing.assert_allclose(image[:, 0, :28, :28].numpy(), train_valid[12:], atol=1e-6)
    assert float(image[:, :, 28].abs().max()) == 0.0 and float(image[:, :, :, 28].abs().max()) == 0.0
    assert splits["val"].tensors["label"].tolist() == [2, 3, 4]


def test_rotmnist_reads_plain_mnist_idx_and_rotates(tmp_path):
    _write_mnist_idx(tmp_path, 40, 20, compress=True)
    task = RotMNIST(
        {
            "path": str(tmp_path),
            "source": "idx",
            "n_train": 20,
            "n_val": 10,
            "n_test": 10,
            "test_rotations": 2,
        },
        tmp_path / "data",
    )
    task.prepare()
    assert {s: len(v) for s, v in task.load_splits().items()} == {"train": 20, "val": 10, "test": 20}


def test_rotmnist_errors(tmp_path):
    with pytest.raises(TaskError, match="needs params.path"):
        RotMNIST({}, tmp_path)
    with pytest.raises(TaskError, match="already rotated"):
        RotMNIST({"path": str(tmp_path), "train_rotations": 2}, tmp_path)
    with pytest.raises(TaskError, match="not found"):
        RotMNIST({"path": str(tmp_path)}, tmp_path / "data").prepare()
    (tmp_path / AMAT_FILES["train_valid"]).write_text("1 2 3\n4 5 6\n")
    with pytest.raises(TaskError, match="784 pixels"):
        RotMNIST({"path": str(tmp_path)}, tmp_path / "data").prepare()
