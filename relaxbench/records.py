"""The run record: the contract between ``relaxbench train`` and everything downstream.

A run directory holds ``record.json`` (this module), ``history.csv`` (one row per epoch), ``model.pt``
(the selected model's state dict) and ``train.log``. ``record.json`` is written last and atomically
(temporary file in the same directory, then ``os.replace``), so its presence means a finished run.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RECORD_SCHEMA_VERSION",
    "LeaderboardError",
    "RunRecord",
    "STATUSES",
    "atomic_write_bytes",
    "atomic_write_npz",
    "atomic_write_text",
    "read_record",
]

RECORD_SCHEMA_VERSION = 1
STATUSES = ("ok", "diverged", "failed")


class LeaderboardError(ValueError):
    """A results folder that cannot be collected (no runs, an unreadable record, a missing table); defined
    here, beside the record format, so that the command line can catch it without importing pandas."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_npz(path: str | Path, **arrays: Any) -> None:
    """``numpy.savez`` of ``arrays`` (uncompressed), written with :func:`atomic_write_bytes`."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


@dataclass
class RunRecord:
    """Everything downstream stages know about one run (task x model x method x seed).

    Metrics of the *evaluated* model (projected to theta = 0 unless the method keeps its free branch) are
    dicts ``{metric_name: value}``, with ``"loss"`` among them; names carry their units (e.g. ``mse_pos``,
    ``accuracy``, ``energy_mae_kcal_mol``). ``test`` is the primary test split; ``tests`` holds the metrics of
    a task's further test splits by split name (e.g. ``{"test_domain": {...}}`` for the smoke plumes).
    Equivariance errors ``equiv_<when>_<kind>`` are relative to the input-dependent part of the output
    (dimensionless, :mod:`relaxbench.symmetry`); ``equiv_<when>_<kind>_abs`` are the same errors in the
    output's units. ``free_share_peak`` is the largest epoch mean of any relaxed layer's free-branch share
    ``theta ||W x|| / ||f_eq x||`` (``history.csv`` columns ``share:<layer>``; ``None`` for a model without
    relaxed layers). ``exported``
    says whether the metrics came from the model's plain-torch export (``export_for_eval``).
    """

    task: str
    model: str
    arch: str
    family: str
    method: str
    seed: int
    config_name: str
    config_hash: str
    status: str
    metric: str
    metric_unit: str
    lower_is_better: bool
    reason: str | None = None
    diverged_epoch: int | None = None
    train: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    tests: dict[str, dict[str, float]] = field(default_factory=dict)
    gen_gap: float | None = None
    test_metric_unprojected: float | None = None
    theta_unprojected: float | None = None
    free_share_peak: float | None = None
    equiv_init_exact: float | None = None
    equiv_init_approx: float | None = None
    equiv_final_exact: float | None = None
    equiv_final_approx: float | None = None
    equiv_init_exact_abs: float | None = None
    equiv_init_approx_abs: float | None = None
    equiv_final_exact_abs: float | None = None
    equiv_final_approx_abs: float | None = None
    equiv_dtype: str | None = None
    params_total: int = 0
    params_equivariant: int = 0
    params_free: int = 0
    epochs_run: int = 0
    best_epoch: int | None = None
    steps: int = 0
    wall_time_s: float = 0.0
    time_per_step_s: float | None = None
    eval_time_s: float | None = None
    peak_memory_mb: float | None = None
    resumed: bool = False
    exported: bool = False
    device: str = "cpu"
    threads: int = 1
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    started_at: str = ""
    run_config: dict[str, Any] = field(default_factory=dict)
    schema_version: int = RECORD_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, allow_nan=True)

    def write(self, path: str | Path) -> None:
        """Write atomically to ``path``."""
        atomic_write_text(path, self.to_json())


def read_record(path: str | Path) -> RunRecord:
    """Read and check a ``record.json`` (unknown keys are an error: the contract is versioned)."""
    data = json.loads(Path(path).read_text())
    known = {f.name for f in fields(RunRecord)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown record field(s) {unknown}")
    return RunRecord(**data)
