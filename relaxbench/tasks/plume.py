"""Smoke plumes: forecast a 2D velocity field whose symmetry is only approximate (the paper's Table 2).

The task of Wang, Walters and Yu (ICML 2022), reused by the constraint-relaxation paper for its relaxed
steerable CNNs. Data are PhiFlow smoke-plume simulations (:mod:`relaxbench.tasks._plume_sim`):

* ``symmetry: rotation``: simulation ``k`` (1-based) has its inflow on side ``(k - 1) mod 4`` (bottom, right,
  top, left) and buoyancy ``0.025 k`` along that side's inward normal, so a 90-degree rotation maps a
  simulation onto one of another buoyancy: the symmetry is approximate;
* ``symmetry: scale``: simulation ``i`` is the bottom plume on a box ``s_i`` times larger
  (``s = linspace(1, 5, 41)``), down-sampled to the task's grid and divided by ``s_i``.

With ``path`` set, the published files are read instead (``Rotation/raw_data_{k}_{j}.pt`` with ``j = (k - 1)
mod 4``, ``Scale/raw_data_{i}.pt``, each a torch tensor ``[T, 2, 64, 64]`` of staggered velocities with the
PhiFlow y axis along the rows); give the folder that holds them (e.g. ``.../Rotation``), ``size: 64`` and
``sampling: staggered``.

Splits, as published (times are start indices of windows; frame ``t`` of a simulation is the velocity after
step ``t + 1``; a window starting at ``t`` reads frames ``t + 2 ... t + 1 + in_frames``, the published offset):

* ``train``: ``train_sims`` at ``train_times``; ``val``: ``train_sims`` at ``val_times``; both with targets
  of ``out_frames`` frames (the published loss is over 6 future frames);
* ``test`` (**Future**): ``train_sims`` at the later ``future_times``; ``test_domain`` (**Domain**): the
  held-out ``domain_sims`` at ``domain_times``; both with targets of ``rollout`` frames (published: 20).

Batches: ``frames [B, in_frames, 2, H, W]`` and ``target [B, L, 2, H, W]`` (float32, ``H = W = size``). Layout:
row 0 is the top of the box; channel 0 is the velocity component along +x (the W axis, rightwards), channel 1
along +y (upwards, i.e. towards row 0), in physical units per time unit. A model maps ``{"frames": [B, in_frames,
2, H, W]}`` to the next frame ``[B, 2, H, W]``; :meth:`Plume.predict` rolls it out autoregressively over the
``L`` target frames (the window shifts by one frame per step), returning ``[B, L, 2, H, W]``. Training loss:
the sum over the ``L`` steps of the per-step mean squared error (as published). Metrics over a split: ``rmse``
(primary) = the square root of the mean squared error over all examples, steps, components and cells (the
published pooled RMSE), ``mse``; :meth:`Plume.rollout_rmse` gives the RMSE per rollout step.

Group action: ``rotation`` uses the cyclic group C4. A rotation by ``k * 90`` degrees (counter-clockwise as an
image is displayed) turns the grid with ``torch.rot90(v, k, dims=(-2, -1))`` and the components with the
rotation matrix ``R(k * 90)`` on ``(v0, v1)``: exactly escnn's ``GeometricTensor.transform`` for an
``irrep(1)`` field of ``rot2dOnR2(4)`` (tested against escnn), and exact on the grid (``exact=True``).
``scale`` uses the published down-sampling: ``v -> interpolate(v, 1 / s) / s`` (bilinear, ``align_corners``),
placed in the middle of a zero field of the original size (the box's walls hold the velocity at zero): an
approximate action (``exact=False``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from relaxbench.records import atomic_write_npz
from relaxbench.symmetry import GroupElement
from relaxbench.tasks import _plume_sim as sim
from relaxbench.tasks.base import Batch, Metric, Split, Task, TaskError

__all__ = [
    "PUBLISHED",
    "Plume",
    "TASK",
    "published_file",
    "read_published",
    "rotate_field",
    "scale_field",
]

#: The published split of simulations (Wang, Walters, Yu 2022, ``run_model.py``).
PUBLISHED = {
    "rotation": {
        "train_sims": [
            27,
            33,
            3,
            28,
            9,
            12,
            22,
            8,
            30,
            25,
            16,
            11,
            23,
            29,
            36,
            26,
            1,
            35,
            19,
            34,
            4,
            2,
            7,
            31,
            17,
        ],
        "domain_sims": [6, 14, 15, 10, 18, 20, 24, 13, 21, 5],
    },
    "scale": {
        "train_sims": [
            27,
            9,
            7,
            11,
            4,
            26,
            35,
            2,
            29,
            10,
            34,
            12,
            37,
            28,
            18,
            24,
            8,
            14,
            1,
            31,
            25,
            0,
            19,
            15,
        ]
        + [36, 3, 20, 13],
        "domain_sims": [5, 30, 16, 23, 33, 6, 17, 22, 21, 32],
    },
}
SYMMETRIES = ("rotation", "scale")
#: Window start ``t`` reads frames from ``t + OFFSET`` (the published ``mid - input_length``).
OFFSET = 2
#: Factors of the scale action used by the equivariance metric (down-sampling by 2 and by 4/3).
SCALE_FACTORS = (2.0, 4.0 / 3.0)
TIME_KEYS = ("train_times", "val_times", "future_times", "domain_times")


def rotate_field(v: Tensor, k: int) -> Tensor:
    """Rotate vector fields ``v [..., 2, H, W]`` (H == W) by ``k`` quarter turns counter-clockwise (as displayed).

    The grid turns with ``torch.rot90(., k, dims=(-2, -1))`` and the components ``(v0, v1)`` (along +x and +y,
    y towards row 0) by the rotation matrix ``R(k pi / 2)``; exact (only swaps and sign changes).
    """
    c, s = ((1, 0), (0, 1), (-1, 0), (0, -1))[k % 4]
    turned = torch.rot90(v, k % 4, dims=(-2, -1))
    v0, v1 = turned.unbind(-3)
    return torch.stack((c * v0 - s * v1, s * v0 + c * v1), dim=-3)


def scale_field(v: Tensor, factor: float) -> Tensor:
    """The published scale action on vector fields ``v [..., 2, H, W]``: bilinear down-sampling by ``factor``
    (``align_corners=True``) and division by ``factor`` (velocities scale with lengths), placed in the middle
    of a zero field of the original ``H x W``. Approximate (interpolation)."""
    *lead, two, h, w = v.shape
    small = (max(1, round(h / factor)), max(1, round(w / factor)))
    flat = v.reshape(-1, two, h, w)
    down = F.interpolate(flat, size=small, mode="bilinear", align_corners=True) / factor
    top, left = (h - small[0]) // 2, (w - small[1]) // 2
    out = F.pad(down, (left, w - small[1] - left, top, h - small[0] - top))
    return out.reshape(*lead, two, h, w)


def published_file(folder: str | Path, symmetry: str, index: int) -> Path:
    """The published file of simulation ``index``: ``raw_data_{k}_{(k - 1) mod 4}.pt`` (rotation) or
    ``raw_data_{i}.pt`` (scale)."""
    name = f"raw_data_{index}_{(index - 1) % 4}.pt" if symmetry == "rotation" else f"raw_data_{index}.pt"
    return Path(folder) / name


def read_published(folder: str | Path, symmetry: str, index: int, n_frames: int) -> np.ndarray:
    """The first ``n_frames`` frames of a published file in this task's layout: ``[n_frames, 2, 64, 64]``
    float32, rows flipped so that row 0 is the top of the box (the files have PhiFlow's y axis along the rows).

    Raises :class:`TaskError` (naming the file) if it is missing, not a tensor file, or of the wrong shape.
    """
    file = published_file(folder, symmetry, index)
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TaskError(f"task 'plume': {file} not found") from None
    except Exception as err:  # torch.load raises many types on a damaged or foreign file
        raise TaskError(f"task 'plume': {file} is not a readable torch file ({type(err).__name__})") from None
    if not isinstance(data, Tensor) or data.dim() != 4 or tuple(data.shape[1:]) != (2, 64, 64):
        shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
        raise TaskError(f"task 'plume': {file} holds {shape}; expected a tensor [T, 2, 64, 64]")
    if data.shape[0] < n_frames:
        raise TaskError(f"task 'plume': {file} has {data.shape[0]} frames; the splits need {n_frames}")
    if not torch.isfinite(data[:n_frames]).all():
        raise TaskError(f"task 'plume': {file} holds non-finite values")
    return data[:n_frames].flip(-2).float().numpy()


class Plume(Task):
    name = "plume"
    kind = "plume"
    metrics = (Metric("rmse", "velocity", True), Metric("mse", "velocity^2", True))
    test_splits = ("test", "test_domain")
    defaults = {
        "symmetry": "rotation",
        "size": 64,
        "train_sims": None,  # None: the published list for the symmetry (PUBLISHED)
        "domain_sims": None,
        "in_frames": 10,
        "out_frames": 6,
        "rollout": 20,
        "train_times": [0, 160],  # [start, stop) of window start indices
        "val_times": [160, 200],
        "future_times": [200, 250],
        "domain_times": [0, 100],
        "time_stride": 1,
        "sampling": "centers",
        "path": None,
    }
    generator_version = "1"

    def __init__(self, params, data_dir) -> None:
        super().__init__(params, data_dir)
        p = self.params
        if p["symmetry"] not in SYMMETRIES:
            raise TaskError(
                f"task 'plume': symmetry must be one of {list(SYMMETRIES)}, got {p['symmetry']!r}"
            )
        for key in ("train_sims", "domain_sims"):
            if p[key] is None:
                p[key] = list(PUBLISHED[p["symmetry"]][key])
        self._check_params()

    @property
    def frame(self) -> str | None:  # type: ignore[override]
        """The rotation set's exact quarter turns for the ``symmetrised`` method; the scale set has no frame."""
        return "c4" if self.params["symmetry"] == "rotation" else None

    def _check_params(self) -> None:
        p = self.params

        def positive_int(key: str, low: int = 1) -> None:
            if not isinstance(p[key], int) or isinstance(p[key], bool) or p[key] < low:
                raise TaskError(f"task 'plume': {key} must be an integer >= {low}, got {p[key]!r}")

        positive_int("size", 8)
        for key in ("in_frames", "out_frames", "rollout", "time_stride"):
            positive_int(key)
        low, high = (1, 36) if p["symmetry"] == "rotation" else (0, len(sim.scale_factors()) - 1)
        for key in ("train_sims", "domain_sims"):
            sims = p[key]
            if (
                not isinstance(sims, list)
                or not sims
                or any(not isinstance(k, int) or not low <= k <= high for k in sims)
                or len(set(sims)) != len(sims)
            ):
                raise TaskError(
                    f"task 'plume': {key} must be a non-empty list of distinct simulation indices in "
                    f"{low}..{high} ({p['symmetry']}), got {sims!r}"
                )
        shared = sorted(set(p["train_sims"]) & set(p["domain_sims"]))
        if shared:
            raise TaskError(
                f"task 'plume': domain_sims must be held out, but {shared} are also in train_sims"
            )
        for key in TIME_KEYS:
            t = p[key]
            if not (isinstance(t, list) and len(t) == 2 and all(isinstance(x, int) for x in t)) or not (
                0 <= t[0] < t[1]
            ):
                raise TaskError(
                    f"task 'plume': {key} must be [start, stop) with 0 <= start < stop, got {t!r}"
                )
        if p["sampling"] not in sim.SAMPLINGS:
            raise TaskError(
                f"task 'plume': sampling must be one of {list(sim.SAMPLINGS)}, got {p['sampling']!r}"
            )
        if p["path"] is not None and (p["size"] != 64 or p["sampling"] != "staggered"):
            raise TaskError(
                "task 'plume': the published files (path) are 64x64 staggered velocities; set size: 64 and "
                "sampling: staggered"
            )

    # --- data -------------------------------------------------------------------------------------
    def _frames_needed(self, times: list[int], length: int) -> int:
        """Frames a simulation needs for windows starting in ``times`` with targets of ``length`` frames."""
        return times[1] - 1 + OFFSET + self.params["in_frames"] + length

    def n_frames(self) -> dict[str, int]:
        """Frames needed by the training simulations and by the held-out (domain) simulations."""
        p = self.params
        train = max(
            self._frames_needed(p["train_times"], p["out_frames"]),
            self._frames_needed(p["val_times"], p["out_frames"]),
            self._frames_needed(p["future_times"], p["rollout"]),
        )
        return {"train": train, "domain": self._frames_needed(p["domain_times"], p["rollout"])}

    def _generate(self, sims: list[int], n_frames: int) -> tuple[np.ndarray, dict[str, float]]:
        p = self.params
        run = (sim.rotation_sims if p["symmetry"] == "rotation" else sim.scale_sims)(
            sims, p["size"], n_frames, p["sampling"]
        )
        return run.frames, {"max_divergence": run.max_divergence, "max_speed": run.max_speed}

    def prepare(self) -> None:
        p = self.params
        need = self.n_frames()
        if p["path"] is not None:
            folder = Path(p["path"])
            if not folder.is_dir():
                raise TaskError(f"task 'plume': path {str(folder)!r} is not a folder")
            train, domain = (
                np.stack([read_published(folder, p["symmetry"], k, need[part]) for k in p[f"{part}_sims"]])
                for part in ("train", "domain")
            )
            info: dict[str, Any] = {"source": str(folder)}
        else:  # one batch, as long as the longer part needs
            frames, facts = self._generate(p["train_sims"] + p["domain_sims"], max(need.values()))
            n_train = len(p["train_sims"])
            train, domain = frames[:n_train, : need["train"]], frames[n_train:, : need["domain"]]
            info = {"source": "generated", **facts}
        atomic_write_npz(self.data_dir / "plume.npz", train_sims=train, domain_sims=domain)
        self.mark_prepared({**info, "frames": need, "simulations": len(train) + len(domain)})

    def _windows(self, frames: np.ndarray, times: list[int], length: int) -> Split:
        """Examples ``{"frames": [N, in_frames, 2, H, W], "target": [N, length, 2, H, W]}`` of every simulation
        of ``frames [S, T, 2, H, W]`` at every start in ``range(*times, time_stride)`` (simulation-major)."""
        p = self.params
        starts = range(times[0], times[1], p["time_stride"])
        data = torch.from_numpy(frames)
        inputs, targets = [], []
        for t in starts:
            first = t + OFFSET
            inputs.append(data[:, first : first + p["in_frames"]])
            targets.append(data[:, first + p["in_frames"] : first + p["in_frames"] + length])
        stack = lambda parts: torch.stack(parts, 1).flatten(0, 1).contiguous()  # noqa: E731
        return Split({"frames": stack(inputs), "target": stack(targets)})

    def load_splits(self) -> dict[str, Split]:
        p = self.params
        with np.load(self.data_dir / "plume.npz") as data:
            train, domain = data["train_sims"], data["domain_sims"]
        return {
            "train": self._windows(train, p["train_times"], p["out_frames"]),
            "val": self._windows(train, p["val_times"], p["out_frames"]),
            "test": self._windows(train, p["future_times"], p["rollout"]),
            "test_domain": self._windows(domain, p["domain_times"], p["rollout"]),
        }

    @property
    def spec(self) -> dict[str, Any]:
        p = self.params
        return {"kind": self.kind, "symmetry": p["symmetry"], "in_frames": p["in_frames"], "size": p["size"]}

    # --- learning ---------------------------------------------------------------------------------
    def predict(self, model: nn.Module, batch: Batch) -> Tensor:
        """Autoregressive rollout over the target's ``L`` frames: ``[B, L, 2, H, W]``. The model sees
        ``{"frames": [B, in_frames, 2, H, W]}`` (never the target) and returns the next frame ``[B, 2, H, W]``."""
        window = batch["frames"]
        steps = []
        for _ in range(batch["target"].shape[1]):
            nxt = model({"frames": window})
            steps.append(nxt)
            window = torch.cat([window[:, 1:], nxt.unsqueeze(1)], dim=1)
        return torch.stack(steps, dim=1)

    def loss(self, pred: Tensor, batch: Batch) -> Tensor:
        """Sum over rollout steps of the per-step mean squared error (the published training loss)."""
        return F.mse_loss(pred, batch["target"]) * pred.shape[1]

    def metric_values(self, pred: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Per-example ``loss`` and ``mse`` (mean over steps, components and cells); ``rmse`` is pooled by
        :meth:`reduce_metrics`."""
        mse = (pred - batch["target"]).pow(2).flatten(1).mean(dim=1)
        return {"loss": mse, "mse": mse}

    def reduce_metrics(self, means: dict[str, float]) -> dict[str, float]:
        """Adds the pooled RMSE of the split: the square root of its mean squared error."""
        return {**means, "rmse": math.sqrt(means["mse"])}

    @torch.no_grad()
    def rollout_rmse(
        self, model: nn.Module, split: Split, batch_size: int, device: torch.device | str
    ) -> np.ndarray:
        """RMSE per rollout step over a split: ``[L]`` (step 1 = the first predicted frame)."""
        model.eval()
        return _rmse_per_step(split, batch_size, device, lambda batch: self.predict(model, batch))

    @staticmethod
    def persistence_rmse(split: Split, batch_size: int) -> np.ndarray:
        """RMSE per rollout step ``[L]`` of the persistence forecast (every future frame is the last input frame,
        no model): the reference a forecaster has to beat. Velocity units, like :meth:`rollout_rmse`."""
        return _rmse_per_step(split, batch_size, "cpu", lambda batch: batch["frames"][:, -1:])

    @torch.no_grad()
    def artifacts(
        self, model: nn.Module, splits: dict[str, Split], batch_size: int, device: torch.device
    ) -> dict[str, bytes]:
        """``rollout.csv``: RMSE per rollout step of every test split (columns ``split, step, rmse``);
        ``reference.csv``: the same for the persistence forecast (:meth:`persistence_rmse`, the same for every run
        of the task's data); and ``fields.npz``: for each test split, the middle example's true and predicted
        fields at steps 1, ``L / 2`` and ``L`` (``{split}_true``, ``{split}_pred`` ``[3, 2, H, W]``,
        ``{split}_steps`` ``[3]``)."""
        rows, reference, fields = [], [], {}
        for name in self.test_splits:
            split = splits[name]
            curve = self.rollout_rmse(model, split, batch_size, device)
            rows += [f"{name},{step},{value!r}" for step, value in enumerate(curve.tolist(), start=1)]
            still = self.persistence_rmse(split, batch_size)
            reference += [f"{name},{step},{value!r}" for step, value in enumerate(still.tolist(), start=1)]
            example = {
                k: v[len(split) // 2 : len(split) // 2 + 1].to(device) for k, v in split.tensors.items()
            }
            length = example["target"].shape[1]
            steps = sorted({1, (length + 1) // 2, length})
            index = [s - 1 for s in steps]
            fields[f"{name}_true"] = example["target"][0, index].cpu().numpy()
            fields[f"{name}_pred"] = self.predict(model, example)[0, index].cpu().numpy()
            fields[f"{name}_steps"] = np.array(steps)
        buffer = io.BytesIO()
        np.savez(buffer, **fields)
        return {
            "rollout.csv": ("split,step,rmse\n" + "\n".join(rows) + "\n").encode(),
            "reference.csv": ("split,step,rmse\n" + "\n".join(reference) + "\n").encode(),
            "fields.npz": buffer.getvalue(),
        }

    # --- symmetry ---------------------------------------------------------------------------------
    def sample_group(self, n: int, generator: torch.Generator) -> list[GroupElement]:
        """Rotation: the quarter turns ``k = 1, 2, 3`` (exact; the first ``min(n, 3)``). Scale: down-sampling by
        the factors of :data:`SCALE_FACTORS` (approximate; the first ``min(n, 2)``). Deterministic."""
        if self.params["symmetry"] == "rotation":
            return [GroupElement(f"rot90x{k}", True, {"k": k}) for k in range(1, min(n, 3) + 1)]
        return [GroupElement(f"scale/{f:.3g}", False, {"factor": f}) for f in SCALE_FACTORS[:n]]

    def _transform(self, g: GroupElement, v: Tensor) -> Tensor:
        return rotate_field(v, g.data["k"]) if "k" in g.data else scale_field(v, g.data["factor"])

    def act(self, g: GroupElement, batch: Batch) -> Batch:
        out = dict(batch)
        for key in ("frames", "target"):
            if key in batch:
                out[key] = self._transform(g, batch[key])
        return out

    def act_output(self, g: GroupElement, pred: Tensor) -> Tensor:
        return self._transform(g, pred)


TASK = Plume


@torch.no_grad()
def _rmse_per_step(
    split: Split, batch_size: int, device: torch.device | str, forecast: Callable[[Batch], Tensor]
) -> np.ndarray:
    """``[L]``: the RMSE of ``forecast(batch)`` (``[B, L or 1, 2, H, W]``, broadcast against the target ``[B, L, 2,
    H, W]``) per rollout step over the split, errors squared in float64."""
    total = None
    for batch in split.batches(batch_size, device=device):
        err = (forecast(batch) - batch["target"]).double().pow(2)
        per_step = err.flatten(2).mean(dim=2).sum(dim=0)
        total = per_step if total is None else total + per_step
    return (total / len(split)).sqrt().cpu().numpy()
