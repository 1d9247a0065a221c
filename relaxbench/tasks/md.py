"""Molecular energies and forces, MD17-style (energy invariant, forces equivariant under SE(3)).

Data. By default generated locally (:mod:`relaxbench.tasks._xtb_md`): Langevin MD of ``molecule`` (ASE name,
default ethanol ``"CH3CH2OH"``) at ``temperature_k`` with GFN2-xTB energies and forces, stored in MD17's npz
layout (``z [N]``, ``R [n, N, 3]`` Angstrom, ``E [n, 1]`` kcal/mol, ``F [n, N, 3]`` kcal/mol/Angstrom). With
``path`` set, the same loader reads a real MD17 file (``md17_<mol>.npz``: keys ``z R E F``) or rMD17 file
(``rmd17_<mol>.npz``: keys ``nuclear_charges coords energies forces``) instead; rMD17's fixed CSV splits are
not used. Frames are split at random (seeded): ``n_train`` / ``n_val`` / ``n_test`` (``None``: all the rest),
950 / 50 / rest as in the paper.

Batches: ``z [B, N]`` long (atomic numbers), ``pos [B, N, 3]`` Angstrom, ``energy [B]`` kcal/mol relative to
the mean training energy (``energy_shift_kcal_mol`` in ``DONE.json``; the shift keeps float32 exact to
~1e-6 kcal/mol, and MAEs do not depend on it), ``forces [B, N, 3]`` kcal/mol/Angstrom.

Prediction (:meth:`MD.predict`): the model maps a batch to a dimensionless energy ``[B]`` (a sum of per-atom
scalars); the task multiplies it by ``force_scale`` (the RMS of the training force components, kcal/mol/A;
NequIP's convention), so the model's outputs and the force targets it learns are O(1), and returns
``{"energy": [B] kcal/mol, "forces": -dE/dpos [B, N, 3] kcal/mol/A}``. The force graph is kept
(``create_graph``) only in training mode.

Loss: ``energy_weight * mean(((E - E*) / s)^2) + force_weight * mean(((F - F*) / s)^2)`` with ``s`` the
force scale (weights 1 and 80 as in the paper's Equiformer runs; the mean over forces runs over atoms and
components). Metrics: ``force_mae_kcal_mol_A`` (primary, MAE over all force components) and
``energy_mae_kcal_mol``.

Symmetry: rotations, translations and permutations of the atoms (``z`` permuted along with ``pos``); the
energy is invariant, the forces rotate and permute with the atoms and ignore translations.
"""

from __future__ import annotations

import json
import zipfile
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from relaxbench.records import atomic_write_npz
from relaxbench.symmetry import GroupElement
from relaxbench.tasks._points import rotate, sample_rotations_and_permutations
from relaxbench.tasks.base import Batch, Metric, Split, Task, TaskError
from relaxbench.validation import SEED

__all__ = ["MAX_ATOMIC_NUMBER", "MD", "TASK", "read_md17"]

#: Largest atomic number a model for this task must embed (H..Ca; MD17 holds H, C, N, O).
MAX_ATOMIC_NUMBER = 20

_LAYOUTS = {
    "MD17": ("z", "R", "E", "F"),
    "rMD17": ("nuclear_charges", "coords", "energies", "forces"),
}


def read_md17(path: str | Path) -> dict[str, np.ndarray]:
    """Read an MD17 or rMD17 npz file as ``{"z": [N], "R": [n, N, 3], "E": [n], "F": [n, N, 3]}`` (float64).

    Units are the files' own: Angstrom, kcal/mol, kcal/mol/Angstrom. Raises :class:`TaskError` for a missing
    file, unknown keys or inconsistent shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"md: data file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            layout = next((name for name, k in _LAYOUTS.items() if set(k) <= keys), None)
            if layout is None:
                raise TaskError(
                    f"md: {path} has keys {sorted(keys)}; expected MD17 ({' '.join(_LAYOUTS['MD17'])}) or "
                    f"rMD17 ({' '.join(_LAYOUTS['rMD17'])})"
                )
            z, r, e, f = (np.asarray(data[k]) for k in _LAYOUTS[layout])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise TaskError(f"md: cannot read {path} as an npz file ({err or type(err).__name__})") from None
    z, e = z.astype(np.int64).reshape(-1), e.astype(np.float64).reshape(-1)
    n, atoms = len(e), len(z)
    if r.shape != (n, atoms, 3) or f.shape != (n, atoms, 3):
        raise TaskError(
            f"md: {path} ({layout}) has inconsistent shapes: z {z.shape}, R {r.shape}, E {e.shape}, F {f.shape}"
        )
    if not all(np.isfinite(a).all() for a in (r, e, f)):
        raise TaskError(f"md: {path} holds NaN or infinite positions, energies or forces")
    if z.min() < 1 or z.max() > MAX_ATOMIC_NUMBER:
        raise TaskError(f"md: {path} has atomic numbers outside 1..{MAX_ATOMIC_NUMBER}: {sorted(set(z))}")
    return {"z": z, "R": r.astype(np.float64), "E": e, "F": f.astype(np.float64)}


class MD(Task):
    """Energies and forces of one molecule along MD trajectories (see the module docstring)."""

    name = "md"
    kind = "molecule"
    frame = "pca"
    metrics = (
        Metric("force_mae_kcal_mol_A", "kcal/mol/Angstrom", True),
        Metric("energy_mae_kcal_mol", "kcal/mol", True),
    )
    defaults = {
        "path": None,
        "molecule": "CH3CH2OH",
        "n_frames": 1500,
        "n_trajectories": 4,
        "stride": 10,
        "equilibration_steps": 200,
        "temperature_k": 500.0,
        "timestep_fs": 0.5,
        "friction_per_fs": 0.01,
        "n_train": 950,
        "n_val": 50,
        "n_test": None,
        "energy_weight": 1.0,
        "force_weight": 80.0,
        "seed": 0,
    }
    params_schema = {
        "path": {"type": ["string", "null"]},
        "molecule": {"type": "string", "minLength": 1},
        "n_frames": {"type": "integer", "minimum": 1},
        "n_trajectories": {"type": "integer", "minimum": 1},
        "stride": {"type": "integer", "minimum": 1},
        "equilibration_steps": {"type": "integer", "minimum": 0},
        "temperature_k": {"type": "number", "exclusiveMinimum": 0},
        "timestep_fs": {"type": "number", "exclusiveMinimum": 0},
        "friction_per_fs": {"type": "number", "minimum": 0},
        "n_train": {"type": "integer", "minimum": 1},
        "n_val": {"type": "integer", "minimum": 1},
        "n_test": {"type": ["integer", "null"], "minimum": 1},
        "energy_weight": {"type": "number", "minimum": 0},
        "force_weight": {"type": "number", "minimum": 0},
        "seed": SEED,
    }
    needs_grad = True
    generator_version = "1"

    def __init__(self, params, data_dir) -> None:
        super().__init__(params, data_dir)
        if self.params["path"] is None:
            self._split_sizes(self.params["n_frames"])

    # --- data -------------------------------------------------------------------------------------
    @property
    def source(self) -> Path:
        """The npz file the frames are read from: the user's ``path`` or the generated file."""
        if self.params["path"] is not None:
            return Path(self.params["path"]).expanduser()
        return self.data_dir / f"xtb_{self.params['molecule']}.npz"

    def _generate(self) -> None:
        from relaxbench.tasks._xtb_md import THEORY, generate_md

        p = self.params
        try:
            import tblite.ase  # noqa: F401
        except ImportError as err:
            raise TaskError(
                f"md: generating data needs the tblite package ({err}); install it, or set 'path' "
                "to an MD17 / rMD17 file"
            ) from None
        if p["n_frames"] < 1 or p["n_trajectories"] < 1 or p["stride"] < 1 or p["equilibration_steps"] < 0:
            raise TaskError("md: n_frames, n_trajectories and stride must be >= 1, equilibration_steps >= 0")
        try:
            from ase.build import molecule as build_molecule

            build_molecule(p["molecule"])
        except KeyError:
            raise TaskError(
                f"md: ASE does not know the molecule {p['molecule']!r} (ase.collections.g2 names, "
                "e.g. 'CH3CH2OH' for ethanol)"
            ) from None
        arrays = generate_md(
            p["molecule"],
            int(p["n_frames"]),
            int(p["n_trajectories"]),
            int(p["stride"]),
            int(p["equilibration_steps"]),
            float(p["temperature_k"]),
            float(p["timestep_fs"]),
            float(p["friction_per_fs"]),
            int(p["seed"]),
        )
        atomic_write_npz(self.source, **arrays, name=np.array(p["molecule"]), theory=np.array(THEORY))

    def _split_sizes(self, n: int) -> tuple[int, int, int]:
        """``(n_train, n_val, n_test)`` for ``n`` frames; :class:`TaskError` if they do not fit."""
        p = self.params
        n_test = n - p["n_train"] - p["n_val"] if p["n_test"] is None else p["n_test"]
        if min(p["n_train"], p["n_val"], n_test) < 1 or p["n_train"] + p["n_val"] + n_test > n:
            raise TaskError(
                f"md: {n} frames cannot be split as n_train={p['n_train']}, n_val={p['n_val']}, "
                f"n_test={p['n_test']} (each >= 1, at most {n} in all)"
            )
        return int(p["n_train"]), int(p["n_val"]), int(n_test)

    def prepare(self) -> None:
        p = self.params
        if p["path"] is None:
            self._split_sizes(int(p["n_frames"]))
            self._generate()
        data = read_md17(self.source)
        n = len(data["E"])
        order = np.random.default_rng(int(p["seed"])).permutation(n)
        bounds = np.cumsum([0, *self._split_sizes(n)])
        splits = {s: order[bounds[i] : bounds[i + 1]] for i, s in enumerate(("train", "val", "test"))}
        atomic_write_npz(self.data_dir / "splits.npz", **splits)
        train = splits["train"]
        self.__dict__.pop("info", None)
        self.mark_prepared(
            {
                "source": str(self.source),
                "n_frames": int(n),
                "n_atoms": int(len(data["z"])),
                "atomic_numbers": data["z"].tolist(),
                "examples": {s: int(len(idx)) for s, idx in splits.items()},
                "energy_shift_kcal_mol": float(data["E"][train].mean()),
                "energy_std_kcal_mol": float(data["E"][train].std()),
                "force_scale_kcal_mol_A": float(np.sqrt(np.mean(data["F"][train] ** 2))),
            }
        )

    @cached_property
    def info(self) -> dict[str, Any]:
        """``DONE.json``: data facts and the normalisation constants (requires :meth:`prepare`)."""
        if not self.prepared():
            raise TaskError(f"md: no prepared data in {self.data_dir}; run prepare() first")
        return json.loads((self.data_dir / "DONE.json").read_text())

    def load_splits(self) -> dict[str, Split]:
        data = read_md17(self.source)
        if len(data["E"]) != self.info["n_frames"]:
            raise TaskError(
                f"md: {self.source} changed since prepare() ({len(data['E'])} frames, "
                f"{self.info['n_frames']} when prepared); prepare again"
            )
        shift = self.info["energy_shift_kcal_mol"]
        out = {}
        with np.load(self.data_dir / "splits.npz") as splits:
            for s in ("train", "val", "test"):
                idx = splits[s]
                out[s] = Split(
                    {
                        "z": torch.from_numpy(np.broadcast_to(data["z"], (len(idx), len(data["z"]))).copy()),
                        "pos": torch.from_numpy(data["R"][idx]).float(),
                        "energy": torch.from_numpy(data["E"][idx] - shift).float(),
                        "forces": torch.from_numpy(data["F"][idx]).float(),
                    }
                )
        return out

    @property
    def spec(self) -> dict:
        return {"kind": self.kind, "max_atomic_number": MAX_ATOMIC_NUMBER}

    # --- learning ---------------------------------------------------------------------------------
    @property
    def force_scale(self) -> float:
        """RMS of the training force components (kcal/mol/Angstrom): the unit of the model's energy."""
        return float(self.info["force_scale_kcal_mol_A"])

    def predict(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        """``{"energy": [B] kcal/mol, "forces": [B, N, 3] kcal/mol/A}`` with forces ``= -dE/dpos``."""
        pos = batch["pos"]
        if not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        with torch.enable_grad():
            energy = self.force_scale * model({**batch, "pos": pos})
            (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=model.training)
        if not model.training:
            energy = energy.detach()
        return {"energy": energy, "forces": -grad}

    def _errors(self, pred: dict[str, Tensor], batch: Batch) -> tuple[Tensor, Tensor]:
        """``(energy error [B], force error [B, N, 3])`` in kcal/mol and kcal/mol/Angstrom."""
        return pred["energy"] - batch["energy"], pred["forces"] - batch["forces"]

    def _loss_per_example(self, de: Tensor, df: Tensor) -> Tensor:
        s = self.force_scale
        return self.params["energy_weight"] * (de / s).pow(2) + self.params["force_weight"] * (df / s).pow(
            2
        ).flatten(1).mean(1)

    def loss(self, pred: dict[str, Tensor], batch: Batch) -> Tensor:
        return self._loss_per_example(*self._errors(pred, batch)).mean()

    def metric_values(self, pred: dict[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        de, df = self._errors(pred, batch)
        return {
            "loss": self._loss_per_example(de, df),
            "force_mae_kcal_mol_A": df.abs().flatten(1).mean(1),
            "energy_mae_kcal_mol": de.abs(),
        }

    # --- symmetry ---------------------------------------------------------------------------------
    def sample_group(self, n: int, generator: torch.Generator) -> list[GroupElement]:
        """``n`` random rotations with random atom permutations and translations (N(0, 1) Angstrom)."""
        elements = sample_rotations_and_permutations(n, generator, self.info["n_atoms"])
        shifts = torch.randn(n, 3, generator=generator, dtype=torch.float64)
        return [GroupElement(g.name, g.exact, {**g.data, "t": shifts[i]}) for i, g in enumerate(elements)]

    def act(self, g: GroupElement, batch: Batch) -> Batch:
        out = dict(batch)
        out["pos"] = rotate(g, batch["pos"]) + g.data["t"].to(batch["pos"])
        out["z"] = batch["z"].index_select(1, g.data["perm"].to(batch["z"].device))
        if "forces" in batch:
            out["forces"] = rotate(g, batch["forces"])
        return out

    def act_output(self, g: GroupElement, pred: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"energy": pred["energy"], "forces": rotate(g, pred["forces"])}

    def input_dependent(self, pred: dict[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        """The energy centred over the batch (an energy offset does not depend on the geometry) and the forces as
        they are (a gradient of the energy, so free of any offset)."""
        return {"energy": pred["energy"] - pred["energy"].mean(), "forces": pred["forces"]}

    def act_model_output(self, g: GroupElement, output: Tensor) -> Tensor:
        """The model outputs the energy ``[B]``, which is invariant."""
        return output


TASK = MD
