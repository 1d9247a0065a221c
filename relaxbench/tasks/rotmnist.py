"""Rotated MNIST from a user's files: the real MNIST-rot benchmark (``.amat``) or plain MNIST IDX files.

``source: amat`` reads ``mnist_all_rotation_normalized_float_train_valid.amat`` (12,000 rows) and
``mnist_all_rotation_normalized_float_test.amat`` (50,000 rows) from ``path``: each row holds 784 floats
(a 28 x 28 image, row-major, already rotated and in [0, 1]) and then the label. The first 10,000 training
rows are the training split and the last 2,000 the validation split, as in the benchmark; ``n_train``
(default 10,000), ``n_val`` (2,000), ``n_test`` (``None``: all) keep the first rows of each. The images are used as they are (no
further rotation): ``*_rotations`` must stay ``None``.

``source: idx`` reads plain MNIST IDX files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``) and
rotates them like ``rotfmnist`` (``*_rotations`` rotated copies per image, default 1; stratified
subsampling: ``n_val`` then ``n_train`` from the training file, ``n_test`` from the test file).

Both are pasted on an odd ``canvas`` (29: one zero row and column added) so that rot90 is exact.
Batches: ``image [B, 1, canvas, canvas]`` float32, ``label [B]`` int64 in 0..9; metrics ``error_rate``
(primary) and ``accuracy``; logits invariant under image rotations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from relaxbench.tasks._images import RotatedImageTask, idx_rotated_arrays, paste_centred
from relaxbench.tasks.base import TaskError
from relaxbench.validation import SEED

__all__ = ["AMAT_FILES", "RotMNIST", "TASK", "read_amat"]

AMAT_FILES = {
    "train_valid": "mnist_all_rotation_normalized_float_train_valid.amat",
    "test": "mnist_all_rotation_normalized_float_test.amat",
}


def read_amat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N, 28, 28] float32, labels [N] int64)`` from an MNIST-rot ``.amat`` text file."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(
            f"rotmnist: {str(path)!r} not found (the MNIST-rot .amat files must be downloaded by the user)"
        )
    try:
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise TaskError(f"rotmnist: {path} is not a numeric .amat file ({err})") from None
    if rows.shape[1] != 785:
        raise TaskError(
            f"rotmnist: {path} has {rows.shape[1]} columns per row, expected 784 pixels + 1 label"
        )
    labels = rows[:, 784]
    if not np.isfinite(rows).all():
        raise TaskError(f"rotmnist: {path} holds NaN or infinite values")
    if len(labels) and (labels.min() < 0 or labels.max() > 9 or (labels != np.round(labels)).any()):
        raise TaskError(f"rotmnist: {path} has labels outside the integers 0..9")
    return rows[:, :784].reshape(-1, 28, 28).astype(np.float32), labels.astype(np.int64)


class RotMNIST(RotatedImageTask):
    name = "rotmnist"
    amat_train_rows = 10_000  # rows of the train_valid file before the validation rows
    defaults = {
        "path": None,
        "source": "amat",
        "n_train": 10_000,
        "n_val": 2_000,
        "n_test": None,
        "train_rotations": None,
        "val_rotations": None,
        "test_rotations": None,
        "canvas": 29,
        "seed": 0,
    }
    params_schema = {
        "path": {"type": ["string", "null"]},
        "source": {"enum": ["amat", "idx"]},
        **{f"n_{s}": {"type": ["integer", "null"], "minimum": 1} for s in ("train", "val", "test")},
        **{
            f"{s}_rotations": {"type": ["integer", "null"], "minimum": 1, "maximum": 64}
            for s in ("train", "val", "test")
        },
        "canvas": {"type": "integer", "minimum": 3, "maximum": 255},
        "seed": SEED,
    }

    def __init__(self, params, data_dir) -> None:
        super().__init__(params, data_dir)
        p = self.params
        if p["path"] is None:
            raise TaskError(
                "rotmnist needs params.path: a folder with the MNIST-rot .amat files or MNIST IDX files"
            )
        rotations = [k for k in ("train_rotations", "val_rotations", "test_rotations") if p[k] is not None]
        if p["source"] == "amat" and rotations:
            raise TaskError(
                f"rotmnist: the .amat images are already rotated; {rotations} apply to source 'idx' only"
            )

    def build_arrays(self):
        p = self.params
        if p["source"] == "idx":
            params = {**p, **{f"{s}_rotations": p[f"{s}_rotations"] or 1 for s in ("train", "val", "test")}}
            return idx_rotated_arrays(p["path"], params, self.data_dir / "raw")
        images, labels = read_amat(Path(p["path"]) / AMAT_FILES["train_valid"])
        test_images, test_labels = read_amat(Path(p["path"]) / AMAT_FILES["test"])
        cut = self.amat_train_rows
        if len(labels) <= cut:
            raise TaskError(
                f"rotmnist: {AMAT_FILES['train_valid']} has {len(labels)} rows, expected more than {cut}"
            )
        parts = {
            "train": (images[:cut], labels[:cut]),
            "val": (images[cut:], labels[cut:]),
            "test": (test_images, test_labels),
        }
        out = {}
        for split, (x, y) in parts.items():
            n = p[f"n_{split}"]
            if n is not None and n > len(y):
                raise TaskError(f"rotmnist: n_{split}={n} but the files hold {len(y)} {split} rows")
            x, y = x[:n], y[:n]
            out[split] = (paste_centred(x, p["canvas"])[:, None], y)
        return out


TASK = RotMNIST
