"""Tetris: classify eight 4-point shapes (two of them a chiral pair) under random 3D rotations.

The standard E(3) unit-test toy. Inputs ``pos [B, 4, 3]`` (unit cube spacing, centred, dimensionless);
target ``label [B]`` in 0..7. Train, validation and test use disjoint seeded random rotations (and point
orders) of the same eight shapes, with optional Gaussian jitter. Symmetry: SO(3) rotations and permutations
of the points; logits are invariant. Tiny and fast: the proof that the trainer works end to end.
"""

from __future__ import annotations

import numpy as np
import torch

from relaxbench.records import atomic_write_npz
from relaxbench.symmetry import random_rotation_matrices
from relaxbench.tasks._points import rotate, sample_rotations_and_permutations
from relaxbench.tasks.base import ClassificationTask, Split
from relaxbench.validation import SEED

__all__ = ["SHAPES", "TASK", "Tetris"]

SHAPES = np.array(
    [
        [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 1, 0)],  # chiral, left
        [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, -1, 0)],  # chiral, right
        [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)],  # square
        [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 0, 3)],  # line
        [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0)],  # corner
        [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0)],  # L
        [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 1)],  # T
        [(0, 0, 0), (1, 0, 0), (1, 1, 0), (2, 1, 0)],  # zigzag
    ],
    dtype=np.float64,
)


class Tetris(ClassificationTask):
    name = "tetris"
    kind = "point_classification"
    frame = "pca"
    defaults = {"n_train": 8, "n_val": 16, "n_test": 32, "jitter": 0.0, "seed": 0}
    params_schema = {
        **{f"n_{s}": {"type": "integer", "minimum": 1, "maximum": 100_000} for s in ("train", "val", "test")},
        "jitter": {"type": "number", "minimum": 0},
        "seed": SEED,
    }

    def prepare(self) -> None:
        p = self.params
        gen = torch.Generator().manual_seed(int(p["seed"]))
        arrays = {}
        for split in ("train", "val", "test"):
            reps = int(p[f"n_{split}"])
            labels = np.repeat(np.arange(len(SHAPES)), reps)
            pos = torch.from_numpy(SHAPES[labels] - SHAPES[labels].mean(axis=1, keepdims=True))
            rot = random_rotation_matrices(len(labels), gen)
            pos = torch.einsum("bij,bpj->bpi", rot, pos)
            pos = pos + p["jitter"] * torch.randn(pos.shape, generator=gen, dtype=torch.float64)
            perm = torch.argsort(torch.rand(len(labels), 4, generator=gen), dim=1)
            pos = torch.take_along_dim(pos, perm.unsqueeze(-1), dim=1)
            arrays[f"{split}_pos"], arrays[f"{split}_label"] = pos.numpy(), labels
        atomic_write_npz(self.data_dir / "tetris.npz", **arrays)
        self.mark_prepared(
            {"examples": {s: int(len(arrays[f"{s}_label"])) for s in ("train", "val", "test")}}
        )

    def load_splits(self) -> dict[str, Split]:
        with np.load(self.data_dir / "tetris.npz") as data:
            return {
                s: Split(
                    {
                        "pos": torch.from_numpy(data[f"{s}_pos"]).float(),
                        "label": torch.from_numpy(data[f"{s}_label"]).long(),
                    }
                )
                for s in ("train", "val", "test")
            }

    @property
    def spec(self) -> dict:
        return {"kind": self.kind, "n_points": 4, "num_classes": len(SHAPES)}

    def sample_group(self, n, generator):
        return sample_rotations_and_permutations(n, generator, 4)

    def act(self, g, batch):
        return {**batch, "pos": rotate(g, batch["pos"])}


TASK = Tetris
