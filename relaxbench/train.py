"""One run, start to record: build, train with validation-based selection, evaluate, write.

The evaluated model is the one selected on the validation split (never the test split), projected to
theta = 0 unless the method keeps its free branch (``rpp``, ``unconstrained``). The run directory gets
``history.csv`` (one row per epoch), ``model.pt`` (selected weights), and ``record.json`` last, all written
atomically; a killed run leaves no record and so is simply rerun. Optional checkpoints
(``training.checkpoint_every``) let ``training.resume`` continue an interrupted run.
"""

from __future__ import annotations

import fcntl
import io
import logging
import math
import os
import random
import resource
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from relaxbench import registry
from relaxbench.config import run_hash
from relaxbench.errors import UserError, one_line
from relaxbench.methods import Method, get_method, regulariser
from relaxbench.records import RunRecord, atomic_write_bytes, atomic_write_text, git_commit, package_versions
from relaxbench.relax import (
    FreeShareMeter,
    free_parameters,
    relaxed_layers,
    set_theta,
    use_published_layout,
)
from relaxbench.relax.dual import attach_dual, dual_state, dual_step
from relaxbench.symmetrise import FrameAveraged
from relaxbench.symmetry import EquivarianceError, model_equivariance_error
from relaxbench.tasks.base import Batch, Split, Task

__all__ = [
    "Diverged",
    "RunLocked",
    "Trainer",
    "build_model",
    "check_finite_parameters",
    "evaluate",
    "regulariser",
    "run_lock",
    "select_device",
    "train_run",
]

log = logging.getLogger("relaxbench.train")


class Diverged(RuntimeError):
    """A non-finite training loss, or non-finite parameters after an epoch."""

    def __init__(self, epoch: int, message: str) -> None:
        super().__init__(message)
        self.epoch = epoch


def check_finite_parameters(model: nn.Module, epoch: int) -> None:
    """:class:`Diverged` if any parameter of ``model`` is NaN or infinite (a finite loss does not rule it out:
    the last step of an epoch can break the weights)."""
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise Diverged(epoch, f"non-finite parameter {name!r} after epoch {epoch}")


def select_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no GPU; use device: auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(resolved: Mapping[str, Any], task: Task, method: Method) -> tuple[nn.Module, Method]:
    """Build the run's model from the seeded global stream; returns it and the method as it applies.

    ``unconstrained`` uses the model's ``build_unconstrained`` where it has one, else the relaxed twin with
    theta fixed at 1, no penalty and no projection (the returned method says so); ``symmetrised`` wraps that
    model in :class:`~relaxbench.symmetrise.FrameAveraged`. Dual-ascent methods get their per-layer mixing
    weights and multipliers (:func:`~relaxbench.relax.dual.attach_dual`), ``lie_layout: published`` the
    published penalty layout.
    """
    entry = registry.get_model(resolved["arch"], resolved.get("family"))
    params = resolved["model_params"]
    try:
        if method.variant in ("unconstrained", "symmetrised"):
            if entry.build_unconstrained is not None:
                model = entry.build_unconstrained(task.spec, **params)
            else:
                model, method = entry.build(task.spec, relaxed=True, **params), method.as_relaxed_twin()
            return (FrameAveraged(model, task) if method.variant == "symmetrised" else model), method
        model = entry.build(task.spec, relaxed=method.relaxed, **params)
    except TypeError as err:
        raise registry.RegistryError(f"model {resolved['model']!r} ({resolved['arch']}): {err}") from err
    if method.dual != "none":
        attach_dual(model)
    if method.lie_layout == "published":
        use_published_layout(model)
    return model, method


@torch.no_grad()
def evaluate(
    model: nn.Module, task: Task, split: Split, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Every metric (and ``loss``) over a split, model in eval mode: the means of the per-example values, then
    :meth:`Task.reduce_metrics` (e.g. a pooled RMSE)."""
    model.eval()
    sums: dict[str, float] = {}
    for batch in split.batches(batch_size, device=device):
        with torch.enable_grad() if task.needs_grad else torch.no_grad():
            pred = task.predict(model, batch)
            values = task.metric_values(pred, batch)
        for name, v in values.items():
            sums[name] = sums.get(name, 0.0) + float(v.detach().double().sum())
    return task.reduce_metrics({name: total / len(split) for name, total in sums.items()})


def _optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(
            params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
        )
    cls = torch.optim.AdamW if cfg["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def lr_at(epoch: int, cfg: Mapping[str, Any]) -> float:
    """Learning rate of 0-based ``epoch``: linear warm-up, then none / step / cosine."""
    base, epochs, warm = cfg["lr"], cfg["epochs"], cfg["warmup_epochs"]
    if epoch < warm:
        return base * (epoch + 1) / (warm + 1)
    if cfg["lr_schedule"] == "step":
        return base * cfg["lr_gamma"] ** (epoch // cfg["lr_step_epochs"])
    if cfg["lr_schedule"] == "cosine":
        progress = (epoch - warm) / max(1, epochs - warm)
        return cfg["lr_min"] + 0.5 * (base - cfg["lr_min"]) * (1 + math.cos(math.pi * progress))
    return base


def exported_for_eval(model: nn.Module) -> nn.Module:
    """The module that evaluates ``model`` as it stands: the model's own ``export_for_eval()`` where it has one
    (e.g. escnn's export of a projected steerable CNN to plain torch modules, which computes the same function
    faster), else the model itself."""
    export = getattr(model, "export_for_eval", None)
    return export() if callable(export) else model


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _save_torch(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


#: At most this many equivariance evaluations of the unprojected model per run (:meth:`Trainer.fit`).
UNPROJECTED_CHECKS = 5


class Trainer:
    """State of one training run (kept in one place so that checkpoints capture all of it).

    :func:`train_run` drives it; the benchmarks time its :meth:`train_epoch` and :meth:`equivariance_error`.
    """

    def __init__(
        self,
        resolved: Mapping[str, Any],
        task: Task,
        splits: dict[str, Split],
        device: torch.device,
        quiet: bool,
    ) -> None:
        self.resolved, self.task, self.splits, self.device, self.quiet = resolved, task, splits, device, quiet
        self.cfg = resolved["training"]
        self.seed = int(resolved["seed"])
        seed_everything(self.seed)
        method = get_method(resolved["method"], resolved["method_params"])
        self.model, self.method = build_model(resolved, task, method)
        self.model.to(device)
        self.optimizer = _optimizer(self.model, self.cfg)
        self.schedule = self.method.theta_schedule(self.cfg["epochs"])
        self.shuffle = torch.Generator().manual_seed(self.seed)
        self.history: list[dict[str, Any]] = []
        self.best: tuple[float, int, dict[str, torch.Tensor], float] | None = None
        self.start_epoch = 0
        self.steps = 0
        self.step_time = 0.0
        self.resumed = False

    # --- checkpoints ------------------------------------------------------------------------------
    def checkpoint_state(self, next_epoch: int) -> dict[str, Any]:
        return {
            "next_epoch": next_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
            "best": self.best,
            "steps": self.steps,
            "step_time": self.step_time,
            "shuffle": self.shuffle.get_state(),
            "torch_rng": torch.random.get_rng_state(),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        self.best = state["best"]
        self.steps, self.step_time = int(state["steps"]), float(state["step_time"])
        self.shuffle.set_state(state["shuffle"])
        torch.random.set_rng_state(state["torch_rng"])
        self.start_epoch = int(state["next_epoch"])
        self.resumed = True

    # --- training ---------------------------------------------------------------------------------
    def equivariance_examples(self) -> Batch:
        """The test examples the equivariance error is measured on, ``{key: [n, ...]}`` with ``n =
        equivariance_examples``: evenly spaced over the test split (:meth:`Split.evenly_spaced`), so the same
        for every run of a task with the same ``n``, and spread over the classes of a class-ordered split."""
        examples = self.splits["test"].evenly_spaced(self.cfg["equivariance_examples"])
        return {k: v.to(self.device) for k, v in examples.items()}

    def equivariance_error(self) -> EquivarianceError:
        """The model's equivariance error as the run records it: on :meth:`equivariance_examples`, with
        ``equivariance_samples`` group elements drawn with a generator seeded from the run's seed, in
        ``equivariance_dtype``, forward passes of at most ``eval_batch_size`` examples."""
        batch = self.equivariance_examples()
        return model_equivariance_error(
            self.model,
            self.task,
            batch,
            self.cfg["equivariance_samples"],
            10_000 + self.seed,
            dtype=getattr(torch, self.cfg["equivariance_dtype"]),
            max_batch=self.cfg["eval_batch_size"],
        )

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        theta = self.schedule(epoch)
        lr = lr_at(epoch, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        set_theta(self.model, theta)
        self.model.train()
        t0 = time.perf_counter()
        sums = {"loss": 0.0, "task_loss": 0.0, "lie": 0.0, "norm": 0.0, "prior": 0.0}
        shares = FreeShareMeter(self.model)
        n = 0
        limit = self.cfg["max_steps_per_epoch"]
        for step, batch in enumerate(
            self.splits["train"].batches(self.cfg["batch_size"], self.shuffle, self.device)
        ):
            if limit is not None and step >= limit:
                break
            ts = time.perf_counter()
            pred = self.task.predict(self.model, batch)
            task_loss = self.task.loss(pred, batch)
            reg, terms = regulariser(self.model, self.method, theta)
            shares.update()  # before the weights change
            loss = task_loss + reg
            if not torch.isfinite(loss):
                raise Diverged(
                    epoch, f"non-finite training loss ({float(loss)}) at epoch {epoch}, step {step}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg["grad_clip"]:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["grad_clip"])
            self.optimizer.step()
            if self.method.dual != "none":
                dual_step(self.model, self.method.eta_dual, self.method.dual, self.method.rho)
            self.step_time += time.perf_counter() - ts
            self.steps += 1
            n += 1
            sums["loss"] += loss.item()
            sums["task_loss"] += task_loss.item()
            sums["lie"] += terms["lie"]
            sums["norm"] += terms["norm"]
            sums["prior"] += terms["prior"]
        row = {"epoch": epoch, "theta": theta, "lr": lr, **{k: v / max(n, 1) for k, v in sums.items()}}
        row.update(shares.means())
        if self.method.dual != "none":
            state = dual_state(self.model)
            for key in ("gamma", "lambda"):
                row[f"{key}_abs_max"] = max(abs(v) for v in state[key])
                row[f"{key}_mean"] = sum(state[key]) / len(state[key])
        row["train_seconds"] = time.perf_counter() - t0
        return row

    def unprojected_check_epochs(self) -> list[int]:
        """Epochs after which :meth:`fit` measures the equivariance error of the unprojected model (at the
        epoch's theta): at most :data:`UNPROJECTED_CHECKS`, evenly spaced over the epochs with theta > 0 and no
        more than every other one of them (first and last included); none for a model without relaxed layers."""
        if next(relaxed_layers(self.model), None) is None:
            return []
        active = [e for e in range(self.cfg["epochs"]) if self.schedule(e) > 0]
        n = min(UNPROJECTED_CHECKS, -(-len(active) // 2))
        if n < 2:
            return active[:n]
        return sorted({active[round(i * (len(active) - 1) / (n - 1))] for i in range(n)})

    def select(self, epoch: int, theta: float) -> dict[str, float]:
        """Validate the evaluated form of the model; keep the best state."""
        set_theta(self.model, self.method.eval_theta(theta))
        val = evaluate(self.model, self.task, self.splits["val"], self.cfg["eval_batch_size"], self.device)
        value = val[self.task.primary.name]
        score = value if self.task.primary.lower_is_better else -value
        if math.isfinite(score) and (self.best is None or score < self.best[0]):
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best = (score, epoch, state, theta)
        return val

    def fit(self, run_dir: Path, config_hash: str) -> None:
        epochs = self.cfg["epochs"]
        every = self.cfg["checkpoint_every"]
        bar = tqdm(
            range(self.start_epoch, epochs), desc="epochs", disable=self.quiet or not sys.stderr.isatty()
        )
        checks = self.unprojected_check_epochs()
        for epoch in bar:
            row = self.train_epoch(epoch)
            check_finite_parameters(self.model, epoch)
            if epoch in checks:  # the model as it trains: theta of the epoch, free branch on
                unprojected = self.equivariance_error()
                row["equiv_unprojected_exact"] = unprojected.exact
                row["equiv_unprojected_approx"] = unprojected.approx
            val = self.select(epoch, row["theta"])
            row.update({f"val_{k}": v for k, v in val.items()})
            self.history.append(row)
            log.info(
                "epoch %d theta %.3f loss %.4g val %s %.4g",
                epoch,
                row["theta"],
                row["loss"],
                self.task.primary.name,
                val[self.task.primary.name],
            )
            bar.set_postfix(loss=f"{row['loss']:.4g}", val=f"{val[self.task.primary.name]:.4g}")
            if every and (epoch + 1) % every == 0 and epoch + 1 < epochs:
                _save_torch(
                    run_dir / "checkpoint.pt",
                    {**self.checkpoint_state(epoch + 1), "config_hash": config_hash},
                )


def free_share_peak(history: list[Mapping[str, Any]]) -> float | None:
    """The largest per-epoch mean free-branch share of any relaxed layer (``share:<layer>`` columns of the
    history), or ``None`` when the history has none (no relaxed layer, no epoch finished, or every share
    undefined)."""
    shares = [
        v
        for row in history
        for k, v in row.items()
        if k.startswith(FreeShareMeter.PREFIX) and not math.isnan(v)
    ]
    return max(shares) if shares else None


def _store_equivariance(record: RunRecord, when: str, err: EquivarianceError) -> None:
    """``record.equiv_<when>_<exact|approx>`` (relative) and ``..._abs`` (absolute) from one evaluation."""
    for kind in ("exact", "approx"):
        setattr(record, f"equiv_{when}_{kind}", getattr(err, kind))
        setattr(record, f"equiv_{when}_{kind}_abs", getattr(err, f"{kind}_abs"))


def _base_record(resolved: Mapping[str, Any], task: Task, status: str) -> RunRecord:
    return RunRecord(
        task=resolved["task"],
        model=resolved["model"],
        arch=resolved["arch"],
        family=resolved.get("family") or registry.get_model(resolved["arch"], resolved.get("family")).family,
        method=resolved["method"],
        seed=int(resolved["seed"]),
        config_name=resolved["config_name"],
        config_hash=run_hash(resolved),
        status=status,
        metric=task.primary.name,
        metric_unit=task.primary.unit,
        lower_is_better=task.primary.lower_is_better,
        versions=package_versions(),
        git_commit=git_commit(),
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        run_config=dict(resolved),
        threads=torch.get_num_threads(),
    )


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` (an exclusive ``flock``) while a process trains the run; a second process of the
    same run stops with :class:`RunLocked`. The kernel releases the lock when its process ends, even by
    SIGKILL, so a killed run never blocks its rerun."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(
                f"{run_dir}: another relaxbench process is training this run; wait for it or stop it"
            ) from None
        yield


class RunLocked(UserError):
    """Another process holds the run's lock."""


def train_run(
    resolved: Mapping[str, Any],
    run_dir: str | Path,
    data_dir: str | Path,
    quiet: bool = True,
    resume: bool = False,
) -> RunRecord:
    """Train one run and write its directory; returns the record (status ``ok``, ``diverged`` or ``failed``).

    ``resume`` (or ``training.resume``) continues from ``run_dir/checkpoint.pt`` when one exists; checkpoints
    are written every ``training.checkpoint_every`` epochs and hold the full training state (weights, optimiser,
    history, best state, random streams), so a resumed run reproduces the uninterrupted one.

    Configuration errors (unknown names, bad parameters, missing data) raise before anything is written;
    errors during training are recorded as ``failed`` with the reason.
    """
    run_dir = Path(run_dir)
    t_start = time.perf_counter()
    device = select_device(resolved["device"])
    task = registry.get_task_class(resolved["task"])(resolved["task_params"], data_dir)
    if not task.prepared():
        task.prepare()
    splits = task.checked_splits()
    with run_lock(run_dir):
        record = _base_record(resolved, task, "ok")
        record.device = str(device)
        trainer, artifacts = None, {}
        try:
            trainer = Trainer(resolved, task, splits, device, quiet)
            artifacts = _train_and_evaluate(trainer, record, run_dir, resume)
        except Diverged as err:
            record.status, record.reason, record.diverged_epoch = "diverged", str(err), err.epoch
        except Exception as err:  # any failure of the run is recorded, with its reason
            log.exception("run failed")
            record.status, record.reason = "failed", one_line(f"{type(err).__name__}: {err}")
        if record.status == "ok":
            _check_finite_metrics(record)
        if trainer is not None and trainer.method.dual != "none":
            record.dual = dual_state(trainer.model)
        record.wall_time_s = time.perf_counter() - t_start
        record.peak_memory_mb = _peak_memory_mb(device)
        _publish(run_dir, record, trainer, artifacts)
    return record


def _check_finite_metrics(record: RunRecord) -> None:
    """An ``ok`` record whose evaluated metrics are not all finite becomes ``diverged``."""
    for split in ("train", "val", "test"):
        bad = sorted(k for k, v in getattr(record, split).items() if not math.isfinite(v))
        if bad:
            record.status, record.reason = (
                "diverged",
                f"non-finite {split} metric(s) {bad} of the evaluated model",
            )
            return


def _train_and_evaluate(
    trainer: Trainer, record: RunRecord, run_dir: Path, resume: bool
) -> Mapping[str, bytes]:
    """Train (resuming from a checkpoint of the same settings), select, evaluate; fills ``record``, returns the
    task's artifacts. Raises :class:`Diverged` for a non-finite loss or parameters."""
    task, splits, device = trainer.task, trainer.splits, trainer.device
    record.run_config["method_params"] = trainer.method.params()
    free = sum(p.numel() for p in free_parameters(trainer.model))
    record.params_total = sum(p.numel() for p in trainer.model.parameters())
    record.params_free, record.params_equivariant = free, record.params_total - free

    set_theta(trainer.model, trainer.method.eval_theta(trainer.schedule(0)))
    init_err = trainer.equivariance_error()
    _store_equivariance(record, "init", init_err)

    checkpoint = run_dir / "checkpoint.pt"
    if (resume or trainer.cfg["resume"]) and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        if state.get("config_hash") == record.config_hash:
            trainer.restore(state)
            log.info("resumed from %s at epoch %d", checkpoint, trainer.start_epoch)
        else:
            log.warning("ignoring %s: it belongs to another configuration of this run", checkpoint)
    record.resumed = trainer.resumed
    try:
        trainer.fit(run_dir, record.config_hash)
    finally:
        record.epochs_run = len(trainer.history)
        record.free_share_peak = free_share_peak(trainer.history)
        record.steps = trainer.steps
        record.time_per_step_s = trainer.step_time / trainer.steps if trainer.steps else None
    if trainer.best is None:
        raise Diverged(len(trainer.history) - 1, "validation metric was never finite")
    _, best_epoch, state, best_theta = trainer.best
    trainer.model.load_state_dict(state)
    record.best_epoch = best_epoch
    eval_theta = trainer.method.eval_theta(best_theta)
    set_theta(trainer.model, eval_theta)
    bs = trainer.cfg["eval_batch_size"]
    evaluated = exported_for_eval(trainer.model)
    record.exported = evaluated is not trainer.model
    for split in ("train", "val", "test"):
        setattr(record, split, evaluate(evaluated, task, splits[split], bs, device))
    record.tests = {
        name: evaluate(evaluated, task, splits[name], bs, device) for name in task.test_splits[1:]
    }
    artifacts = task.artifacts(evaluated, splits, bs, device)
    record.gen_gap = record.test["loss"] - record.train["loss"]
    t_eval = time.perf_counter()
    final = trainer.equivariance_error()
    record.eval_time_s = time.perf_counter() - t_eval
    _store_equivariance(record, "final", final)
    record.equiv_dtype = final.dtype
    if trainer.method.relaxed and best_theta > 0 and eval_theta == 0:
        set_theta(trainer.model, best_theta)
        unprojected = evaluate(trainer.model, task, splits["test"], bs, device)
        record.test_metric_unprojected = unprojected[task.primary.name]
        record.theta_unprojected = best_theta
        set_theta(trainer.model, eval_theta)
    return artifacts


def _publish(
    run_dir: Path, record: RunRecord, trainer: Trainer | None, artifacts: Mapping[str, bytes]
) -> None:
    """Write the run's files (and the task's ``artifacts``) into a staging folder, then move them in place,
    ``record.json`` last.

    A rerun killed before this point leaves an earlier finished run untouched.
    """
    stage = run_dir / ".partial"
    files = [*artifacts, "history.csv", "record.json"]
    for name, content in artifacts.items():
        atomic_write_bytes(stage / name, content)
    history = trainer.history if trainer is not None else []
    atomic_write_text(stage / "history.csv", pd.DataFrame(history).to_csv(index=False))
    if record.status == "ok":
        _save_torch(stage / "model.pt", trainer.model.state_dict())
        files.insert(0, "model.pt")
    else:
        (run_dir / "model.pt").unlink(missing_ok=True)
    record.write(stage / "record.json")
    for name in files:
        os.replace(stage / name, run_dir / name)
    stage.rmdir()
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)
