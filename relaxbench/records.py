"""The run record: the contract between ``relaxbench train`` and everything downstream.

A run directory holds ``record.json`` (this module), ``history.csv`` (one row per epoch), ``model.pt``
(the selected model's state dict) and ``.lock`` (locked while a process trains the run). ``record.json`` is
written last and atomically (temporary file in the same directory, then ``os.replace``), so its presence means
a finished run. Files get the permissions the umask gives (``tempfile`` alone would make them private).
"""

from __future__ import annotations

import ctypes
import errno
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from relaxbench.errors import UserError

__all__ = [
    "RECORD_SCHEMA_VERSION",
    "LeaderboardError",
    "RunRecord",
    "STATUSES",
    "atomic_replace_dir",
    "atomic_write_bytes",
    "atomic_write_npz",
    "atomic_write_text",
    "current_umask",
    "follow_umask",
    "git_commit",
    "package_versions",
    "read_record",
]

RECORD_SCHEMA_VERSION = 1
STATUSES = ("ok", "diverged", "failed")


class LeaderboardError(UserError):
    """A results folder that cannot be collected or reported (no runs, an unreadable record, a missing table);
    defined here, beside the record format, so that the command line can catch it without importing pandas."""


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(
        0o022
    )  # elsewhere: set and restore (not thread-safe, but relaxbench writes from one thread)
    os.umask(mask)
    return mask


def follow_umask(path: str | Path, directory: bool = False) -> None:
    """Give ``path`` the permissions ``open`` / ``mkdir`` would have given it (0666 or 0777 less the umask);
    ``tempfile`` creates private (0600 / 0700) files and folders, which collaborators could not read."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``; the file gets
    the permissions the umask gives new files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where the
    system or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    rename = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if rename is None:  # C library older than glibc 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    if rename(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def atomic_replace_dir(stage: str | Path, target: str | Path) -> None:
    """Put the complete folder ``stage`` at ``target`` (same file system) and delete the old ``target``.

    On Linux the two folders are exchanged in one step, so a reader (or a kill) sees either the old or the new
    folder, never a mix or nothing. Elsewhere the old folder is first renamed aside (``.<name>.old-*``), which
    leaves a short window without ``target``.
    """
    stage, target = Path(stage), Path(target)
    if not target.exists():
        os.replace(stage, target)
        return
    if _exchange(stage, target):
        shutil.rmtree(stage)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, aside / target.name)
    os.replace(stage, target)
    shutil.rmtree(aside)


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
    says whether the metrics came from the model's plain-torch export (``export_for_eval``). ``dual`` holds the
    dual-ascent methods' final per-layer ``gamma``, ``lambda`` and ``slack`` (``None`` for other methods).
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
    dual: dict[str, list[float]] | None = None
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_metrics(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
    )


#: Type checks of the fields downstream code computes with (a record is JSON a user can edit).
_FIELD_CHECKS = {
    **{
        name: lambda v: isinstance(v, str) for name in ("task", "model", "arch", "family", "method", "metric")
    },
    **{
        name: lambda v: isinstance(v, str) for name in ("config_name", "config_hash", "status", "metric_unit")
    },
    "seed": _is_int,
    "lower_is_better": lambda v: isinstance(v, bool),
    **{name: _is_metrics for name in ("train", "val", "test")},
    **{name: lambda v: isinstance(v, dict) for name in ("versions", "run_config")},
}


def read_record(path: str | Path) -> RunRecord:
    """Read and check a ``record.json``; :class:`LeaderboardError` names the file and what is wrong with it
    (not UTF-8 JSON, not an object, unknown or missing fields: the contract is versioned, a bad status)."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as err:
        raise LeaderboardError(f"{path}: cannot read the run record ({err.strerror or err})") from None
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError
        raise LeaderboardError(f"{path}: unreadable run record (not UTF-8 JSON: {err})") from None
    if not isinstance(data, dict):
        raise LeaderboardError(f"{path}: unreadable run record (a JSON {type(data).__name__}, not an object)")
    known = {f.name: f for f in fields(RunRecord)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise LeaderboardError(f"{path}: unreadable run record (unknown field(s) {unknown})")
    required = sorted(n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING)
    absent = [n for n in required if n not in data]
    if absent:
        raise LeaderboardError(f"{path}: unreadable run record (missing field(s) {absent})")
    wrong = [name for name, check in _FIELD_CHECKS.items() if name in data and not check(data[name])]
    if wrong:
        raise LeaderboardError(f"{path}: unreadable run record (field(s) {wrong} of the wrong type)")
    try:
        return RunRecord(**data)
    except ValueError as err:
        raise LeaderboardError(f"{path}: unreadable run record ({err})") from None


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages a record depends on (provenance)."""
    out = {"python": platform.python_version()}
    for pkg in ("relaxbench", "torch", "e3nn", "escnn", "numpy", "scipy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def git_commit() -> str | None:
    """The relaxbench checkout's commit (provenance), or ``None`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
