"""Shapes: classify SO(3)-rotated point clouds (the Vector Neurons experiment of the paper).

Inputs ``pos [B, P, 3]`` (dimensionless, inside the unit ball), target ``label [B]``. Two datasets, one code
path: ``prepare`` writes ``{train,val,test}.h5`` into the data directory in ModelNet40's HDF5 layout
(datasets ``data (N, P, 3) float32`` and ``label (N, 1) int64``), and ``load_splits`` reads them.

- ``dataset: synthetic`` (default, no download): twelve parametric surfaces with random proportions
  (:mod:`relaxbench.tasks._shapes_gen`), area-uniform samples, jittered, centred, scaled to the unit ball and
  rotated by seeded Haar-random rotations, ``n_{train,val,test}_per_class`` clouds per class.
- ``dataset: modelnet40``: the real ``modelnet40_ply_hdf5_2048/ply_data_{train0..4,test0..1}.h5`` under
  ``path`` (9,840 / 2,468 shapes of 2,048 points, 40 classes). The first ``n_points`` points of each shape
  are kept (the paper uses 300), a seeded ``val_fraction`` of the training shapes becomes the validation
  split, and every shape gets one seeded random rotation (train and test).

Rotations are drawn once, at ``prepare``: the test set is a fixed, seeded set of rotated clouds (the
published scripts redrew them at every evaluation), and training sees one rotation per shape.

Symmetry: SO(3) rotations and permutations of the points act on ``pos``; logits are invariant (exact for
every element). Chirality: ``helix_left`` is the mirror image of ``helix_right``, so a model that is
invariant under all of O(3) (rotations *and* reflections) gives the pair identical logits and cannot beat
chance on it: its error rate is at least 1/24 (half of the two helix classes' share of 2/12) on the
balanced synthetic splits. An SO(3)-invariant model can separate them. VN-PointNet's first layer uses a
cross product (a pseudo-vector), so it is SO(3)- but not O(3)-invariant; VN-DGCNN uses only
differences of vectors and is O(3)-invariant (see the tests).

Metrics: ``error_rate`` (primary, fraction, lower is better) and ``accuracy``; loss: cross-entropy.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import h5py
import numpy as np
import torch
from scipy.spatial.transform import Rotation

from relaxbench.records import atomic_write_bytes
from relaxbench.tasks._points import rotate, sample_rotations_and_permutations
from relaxbench.tasks._shapes_gen import CLASSES, generate_split
from relaxbench.tasks.base import ClassificationTask, Split, TaskError
from relaxbench.validation import SEED

__all__ = ["MODELNET40_DIR", "Shapes", "TASK", "read_h5", "write_h5"]

SPLITS = ("train", "val", "test")
MODELNET40_DIR = "modelnet40_ply_hdf5_2048"
MODELNET40_POINTS = 2048
MODELNET40_CLASSES = 40


def write_h5(path: Path, data: np.ndarray, label: np.ndarray) -> None:
    """Write ``data (N, P, 3)`` as float32 and ``label (N, 1)`` as int64 atomically, ModelNet40's layout."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("data", data=np.asarray(data, dtype=np.float32))
        f.create_dataset("label", data=np.asarray(label, dtype=np.int64).reshape(-1, 1))
    atomic_write_bytes(path, buffer.getvalue())


def read_h5(path: Path, n_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(data [N, n_points, 3] float32, label [N] int64)`` from a file in ModelNet40's layout."""
    try:
        with h5py.File(path, "r") as f:
            data = f["data"][:, :n_points] if n_points is not None else f["data"][()]
            label = f["label"][()]
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise TaskError(
            f"{path}: not a ModelNet40-style HDF5 file with datasets 'data' and 'label' ({err})"
        ) from err
    if data.ndim != 3 or data.shape[-1] != 3 or len(label) != len(data):
        raise TaskError(
            f"{path}: expected data (N, P, 3) and label (N, 1), got {data.shape} and {label.shape}"
        )
    if not np.isfinite(data).all():
        raise TaskError(f"{path}: the point clouds hold NaN or infinite values")
    return data.astype(np.float32), label.reshape(-1).astype(np.int64)


def _modelnet40_files(root: Path, split: str) -> list[Path]:
    """``ply_data_{split}0.h5, ply_data_{split}1.h5, ...`` in numeric order."""
    files = [
        f for f in root.glob(f"ply_data_{split}*.h5") if re.fullmatch(rf"ply_data_{split}\d+\.h5", f.name)
    ]
    return sorted(files, key=lambda f: int(re.sub(r"\D", "", f.name)))


class Shapes(ClassificationTask):
    name = "shapes"
    kind = "point_classification"
    frame = "pca"
    defaults = {
        "dataset": "synthetic",
        "path": None,
        "n_points": 300,
        "n_train_per_class": 64,
        "n_val_per_class": 16,
        "n_test_per_class": 32,
        "jitter": 0.01,
        "val_fraction": 0.1,
        "seed": 0,
    }
    params_schema = {
        "dataset": {"enum": ["synthetic", "modelnet40"]},
        "path": {"type": ["string", "null"]},
        "n_points": {"type": "integer", "minimum": 1, "maximum": 100_000},
        **{f"n_{s}_per_class": {"type": "integer", "minimum": 1, "maximum": 100_000} for s in SPLITS},
        "jitter": {"type": "number", "minimum": 0},
        "val_fraction": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "seed": SEED,
    }
    generator_version = "1"

    def __init__(self, params, data_dir) -> None:
        super().__init__(params, data_dir)
        p = self.params
        if p["dataset"] == "modelnet40":
            if p["path"] is None:
                raise TaskError(
                    "task 'shapes': dataset 'modelnet40' needs 'path' (the folder of ply_data_*.h5)"
                )
            if p["n_points"] > MODELNET40_POINTS:
                raise TaskError(
                    f"task 'shapes': ModelNet40 has {MODELNET40_POINTS} points per shape, "
                    f"n_points={p['n_points']} asked"
                )

    # --- data -------------------------------------------------------------------------------------
    def prepare(self) -> None:
        p = self.params
        rng = np.random.default_rng(int(p["seed"]))
        if p["dataset"] == "synthetic":
            splits = {
                s: generate_split(p[f"n_{s}_per_class"], p["n_points"], p["jitter"], rng) for s in SPLITS
            }
        else:
            splits = self._convert_modelnet40(rng)
        for split, (data, label) in splits.items():
            write_h5(self.data_dir / f"{split}.h5", data, label)
        self.mark_prepared(
            {
                "examples": {s: int(len(label)) for s, (_, label) in splits.items()},
                "num_classes": self.spec["num_classes"],
                "class_names": list(CLASSES) if p["dataset"] == "synthetic" else self._modelnet40_names(),
            }
        )

    def _modelnet40_root(self) -> Path:
        path = Path(self.params["path"]).expanduser()
        root = path / MODELNET40_DIR if (path / MODELNET40_DIR).is_dir() else path
        if not _modelnet40_files(root, "train") or not _modelnet40_files(root, "test"):
            raise TaskError(
                f"task 'shapes': no ModelNet40 files ply_data_train<k>.h5 and ply_data_test<k>.h5 "
                f"in {str(root)!r}"
            )
        return root

    def _modelnet40_names(self) -> list[str] | None:
        """Class names from the distribution's ``shape_names.txt`` (label order), if it is there."""
        names = self._modelnet40_root() / "shape_names.txt"
        return names.read_text().split() if names.is_file() else None

    def _convert_modelnet40(self, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """First ``n_points`` points, a seeded validation carve-out, one seeded rotation per shape."""
        root, n_points = self._modelnet40_root(), self.params["n_points"]
        raw = {}
        for split in ("train", "test"):
            parts = [read_h5(f, n_points) for f in _modelnet40_files(root, split)]
            raw[split] = (np.concatenate([d for d, _ in parts]), np.concatenate([lab for _, lab in parts]))
            if raw[split][0].shape[1] != n_points:
                raise TaskError(
                    f"task 'shapes': {root} has {raw[split][0].shape[1]} points per shape, "
                    f"n_points={n_points} asked"
                )
            labels = raw[split][1]
            if labels.min() < 0 or labels.max() >= MODELNET40_CLASSES:
                raise TaskError(f"task 'shapes': {root} has labels outside 0..{MODELNET40_CLASSES - 1}")
        order = rng.permutation(len(raw["train"][1]))
        n_val = max(1, int(round(self.params["val_fraction"] * len(order))))
        pick = {"val": order[:n_val], "train": np.sort(order[n_val:])}
        splits = {s: (raw["train"][0][idx], raw["train"][1][idx]) for s, idx in pick.items()}
        splits["test"] = raw["test"]
        out = {}
        for split in SPLITS:
            data, label = splits[split]
            rotations = Rotation.random(len(data), random_state=rng).as_matrix()
            out[split] = (np.einsum("nij,npj->npi", rotations, data.astype(np.float64)), label)
        return out

    def load_splits(self) -> dict[str, Split]:
        out = {}
        for split in SPLITS:
            path = self.data_dir / f"{split}.h5"
            if not path.is_file():
                raise TaskError(f"task 'shapes': {path} is missing; run prepare first")
            data, label = read_h5(path)
            out[split] = Split({"pos": torch.from_numpy(data), "label": torch.from_numpy(label)})
        return out

    @property
    def spec(self) -> dict:
        synthetic = self.params["dataset"] == "synthetic"
        return {
            "kind": self.kind,
            "n_points": self.params["n_points"],
            "num_classes": len(CLASSES) if synthetic else MODELNET40_CLASSES,
        }

    # --- symmetry ---------------------------------------------------------------------------------
    def sample_group(self, n, generator):
        return sample_rotations_and_permutations(n, generator, self.params["n_points"])

    def act(self, g, batch):
        return {**batch, "pos": rotate(g, batch["pos"])}


TASK = Shapes
