"""Charged N-body: predict the positions of 5 charged particles 1,000 integration steps ahead.

The standard task of Kipf et al. (2018) as used by EGNN, SEGNN and the constraint-relaxation paper. Inputs are
the state at frame ``frame_in`` (default 30): ``loc [B, 5, 3]`` positions, ``vel [B, 5, 3]`` velocities and
``charges [B, 5, 1]`` (+-1); the target ``target [B, 5, 3]`` is the positions at frame ``frame_out`` (default 40).
All quantities are in the simulator's dimensionless units (lengths, length per time unit). Loss and primary
metric: mean squared error of the positions (``mse_pos``, units length^2), averaged over particles and axes.

Data: by default generated locally with :mod:`relaxbench.tasks._nbody_sim`, which reproduces the reference
generator's random stream (``generate_dataset.py --simulation=charged --seed 43``): the reference draws 10,000
training, then 2,000 validation, then 2,000 test trajectories; the task keeps the first ``n_train`` /
``n_val`` / ``n_test`` of each and integrates only those, only up to ``frame_out``. With ``path`` set, the
reference files ``{loc,vel,charges}_{train,valid,test}_charged5_initvel1small.npy`` in that folder are read
instead (``loc``/``vel`` ``[n, frames, 3, 5]``, ``charges [n, 5, 1]``). Either way ``prepare`` caches the two
frames it needs in ``nbody.npz``.

Symmetry: rotations, translations and permutations of the particles, all exact. Positions transform as
``x -> R x + t``, velocities as ``v -> R v``, charges are permuted only; predicted positions transform like
positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from relaxbench.records import atomic_write_npz
from relaxbench.symmetry import GroupElement
from relaxbench.tasks import _nbody_sim as sim
from relaxbench.tasks._points import rotate, sample_rotations_and_permutations
from relaxbench.tasks.base import Batch, Metric, Split, Task, TaskError
from relaxbench.validation import SEED

__all__ = ["NBody", "REFERENCE_SIZES", "TASK", "reference_file"]

#: Trajectories per split in the reference data set, in the order the reference draws them.
REFERENCE_SIZES = {"train": 10_000, "val": 2_000, "test": 2_000}
_FILE_SPLIT = {"train": "train", "val": "valid", "test": "test"}
#: Scale (length units) of the random translations used by the equivariance metric.
TRANSLATION_SCALE = 1.0


def reference_file(folder: str | Path, key: str, split: str) -> Path:
    """Path of a reference array, e.g. ``loc_valid_charged5_initvel1small.npy`` for ``("loc", "val")``."""
    return Path(folder) / f"{key}_{_FILE_SPLIT[split]}_charged5_initvel1small.npy"


class NBody(Task):
    name = "nbody"
    kind = "nbody"
    frame = "pca"
    frame_key = "loc"
    metrics = (Metric("mse_pos", "length^2", True),)
    defaults = {
        "n_train": 3000,
        "n_val": 2000,
        "n_test": 2000,
        "seed": 43,
        "frame_in": 30,
        "frame_out": 40,
        "path": None,
    }
    params_schema = {
        **{f"n_{s}": {"type": "integer", "minimum": 1, "maximum": n} for s, n in REFERENCE_SIZES.items()},
        "seed": SEED,
        "frame_in": {"type": "integer", "minimum": 0},
        "frame_out": {"type": "integer", "minimum": 1},
        "path": {"type": ["string", "null"]},
    }
    generator_version = "1"

    def __init__(self, params, data_dir) -> None:
        super().__init__(params, data_dir)
        p = self.params
        f_in, f_out = p["frame_in"], p["frame_out"]
        if not f_in < f_out < sim.N_FRAMES:
            raise TaskError(
                f"task 'nbody': need integers 0 <= frame_in < frame_out <= {sim.N_FRAMES - 1}, "
                f"got frame_in={f_in!r}, frame_out={f_out!r}"
            )

    # --- data -------------------------------------------------------------------------------------
    def _generate(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Draw the whole reference stream, integrate only the kept trajectories (one batch) up to frame_out."""
        p = self.params
        rng = np.random.RandomState(p["seed"])
        drawn = {split: sim.draw_initial_states(rng, size) for split, size in REFERENCE_SIZES.items()}
        kept = {split: [a[: p[f"n_{split}"]] for a in drawn[split]] for split in drawn}
        loc0, vel0, charges = (np.concatenate([kept[s][i] for s in kept]) for i in range(3))
        loc, vel = sim.integrate(loc0, vel0, charges, [p["frame_in"], p["frame_out"]])
        out, start = {}, 0
        for split in kept:
            stop = start + p[f"n_{split}"]
            out[split] = (loc[start:stop, 0], vel[start:stop, 0], charges[start:stop], loc[start:stop, 1])
            start = stop
        return out

    def _read_reference(
        self, folder: Path
    ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """The kept trajectories and frames from reference-layout ``.npy`` files in ``folder``."""
        p = self.params
        n_particles = sim.N_PARTICLES
        out = {}
        for split in REFERENCE_SIZES:
            n = p[f"n_{split}"]
            arrays = {}
            for key in ("loc", "vel", "charges"):
                file = reference_file(folder, key, split)
                try:
                    arrays[key] = np.load(file, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError, EOFError) as err:
                    raise TaskError(
                        f"task 'nbody': cannot read {file} ({err or type(err).__name__})"
                    ) from None
            loc, vel, charges = arrays["loc"], arrays["vel"], arrays["charges"]
            for key, arr in (("loc", loc), ("vel", vel)):
                if arr.ndim != 4 or arr.shape[2:] != (3, n_particles) or arr.shape[1] <= p["frame_out"]:
                    raise TaskError(
                        f"task 'nbody': {reference_file(folder, key, split)} has shape {arr.shape}; expected "
                        f"[n, frames > {p['frame_out']}, 3, {n_particles}]"
                    )
            if loc.shape != vel.shape or charges.shape != (loc.shape[0], n_particles, 1):
                raise TaskError(
                    f"task 'nbody': {split} arrays disagree: loc {loc.shape}, vel {vel.shape}, charges "
                    f"{charges.shape} (expected charges [n, {n_particles}, 1])"
                )
            if loc.shape[0] < n:
                raise TaskError(
                    f"task 'nbody': n_{split}={n} but {folder} holds only {loc.shape[0]} trajectories"
                )
            for key, arr in (("loc", loc), ("vel", vel), ("charges", charges)):
                if not np.isfinite(arr[:n]).all():
                    raise TaskError(
                        f"task 'nbody': {reference_file(folder, key, split)} holds NaN or infinite values"
                    )
            out[split] = tuple(
                np.array(a, dtype=np.float64)
                for a in (
                    loc[:n, p["frame_in"]],
                    vel[:n, p["frame_in"]],
                    charges[:n],
                    loc[:n, p["frame_out"]],
                )
            )
        return out

    def prepare(self) -> None:
        folder = self.params["path"]
        if folder is not None and not Path(folder).is_dir():
            raise TaskError(f"task 'nbody': path {str(folder)!r} is not a folder")
        data = self._read_reference(Path(folder)) if folder is not None else self._generate()
        arrays = {}
        for split, (loc, vel, charges, target) in data.items():
            # reference layout [n, 3, particles] -> [n, particles, 3]
            arrays[f"{split}_loc"] = loc.transpose(0, 2, 1)
            arrays[f"{split}_vel"] = vel.transpose(0, 2, 1)
            arrays[f"{split}_charges"] = charges
            arrays[f"{split}_target"] = target.transpose(0, 2, 1)
        atomic_write_npz(self.data_dir / "nbody.npz", **arrays)
        source = str(folder) if folder is not None else "generated"
        self.mark_prepared({"source": source, "examples": {s: len(d[0]) for s, d in data.items()}})

    def load_splits(self) -> dict[str, Split]:
        with np.load(self.data_dir / "nbody.npz") as data:
            return {
                split: Split(
                    {
                        key: torch.from_numpy(data[f"{split}_{key}"]).float()
                        for key in ("loc", "vel", "charges", "target")
                    }
                )
                for split in REFERENCE_SIZES
            }

    @property
    def spec(self) -> dict:
        return {
            "kind": self.kind,
            "n_particles": sim.N_PARTICLES,
        }

    # --- learning ---------------------------------------------------------------------------------
    def loss(self, pred: Tensor, batch: Batch) -> Tensor:
        return torch.nn.functional.mse_loss(pred, batch["target"])

    def metric_values(self, pred: Tensor, batch: Batch) -> dict[str, Tensor]:
        mse = (pred - batch["target"]).pow(2).mean(dim=(1, 2))
        return {"loss": mse, "mse_pos": mse}

    # --- symmetry ---------------------------------------------------------------------------------
    def sample_group(self, n: int, generator: torch.Generator) -> list[GroupElement]:
        """``n`` rotations, each with a particle permutation and a translation (``TRANSLATION_SCALE``)."""
        elements = sample_rotations_and_permutations(n, generator, sim.N_PARTICLES)
        shifts = TRANSLATION_SCALE * torch.randn(n, 3, generator=generator, dtype=torch.float64)
        return [GroupElement(g.name, True, {**g.data, "t": shifts[i]}) for i, g in enumerate(elements)]

    def act(self, g: GroupElement, batch: Batch) -> Batch:
        out = dict(batch)
        out["loc"] = self.act_output(g, batch["loc"])
        out["vel"] = rotate(g, batch["vel"])
        out["charges"] = batch["charges"].index_select(1, g.data["perm"].to(batch["charges"].device))
        if "target" in batch:
            out["target"] = self.act_output(g, batch["target"])
        return out

    def act_output(self, g: GroupElement, pred: Tensor) -> Tensor:
        return rotate(g, pred) + g.data["t"].to(pred)

    def input_dependent(self, pred: Tensor, batch: Batch) -> Tensor:
        """The predicted displacement ``pred - loc`` ``[B, 5, 3]`` (length units): a prediction is mostly the input
        position it starts from, which says nothing about the model."""
        return pred - batch["loc"]


TASK = NBody
