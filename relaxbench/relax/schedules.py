"""theta schedules: the weight of the free branch as a function of the epoch.

A schedule maps an epoch index ``e`` (0-based, ``0 <= e``) of a run of ``E`` epochs to ``theta_e >= 0``.
The paper's schedule is the triangle: ``theta_e = 2e/E`` rising to 1 at ``e = E/2``, then
``1 - 2(e - E/2)/E``, clipped at 0, so it returns to 0 at ``e = E``. Evaluation always projects
(theta = 0) unless a method says otherwise; the schedule only drives training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SCHEDULES", "Schedule", "make_schedule"]


def _triangle(e: float, epochs: int, peak: float) -> float:
    half = epochs / 2.0
    theta = 2.0 * e / epochs if e <= half else 1.0 - 2.0 * (e - half) / epochs
    return peak * min(1.0, max(0.0, theta))


def _constant(e: float, epochs: int, peak: float) -> float:
    return peak


def _linear_decay(e: float, epochs: int, peak: float) -> float:
    return peak * max(0.0, 1.0 - e / epochs)


def _cosine_decay(e: float, epochs: int, peak: float) -> float:
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, e / epochs)))


def _none(e: float, epochs: int, peak: float) -> float:
    return 0.0


SCHEDULES: dict[str, Callable[[float, int, float], float]] = {
    "triangle": _triangle,
    "constant": _constant,
    "linear_decay": _linear_decay,
    "cosine_decay": _cosine_decay,
    "none": _none,
}


@dataclass(frozen=True)
class Schedule:
    """A named theta schedule over ``epochs`` epochs with maximum ``peak`` (dimensionless)."""

    name: str
    epochs: int
    peak: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown theta schedule {self.name!r}; choices: {sorted(SCHEDULES)}")
        if self.epochs < 1:
            raise ValueError(f"a schedule needs at least one epoch, got epochs={self.epochs}")
        if self.peak < 0:
            raise ValueError(f"theta must be non-negative, got peak={self.peak}")

    def __call__(self, epoch: float) -> float:
        """theta for 0-based ``epoch``; epochs past the end keep the schedule's limit (0 for decays)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        return float(SCHEDULES[self.name](float(epoch), self.epochs, self.peak))


def make_schedule(name: str, epochs: int, peak: float = 1.0) -> Schedule:
    """Build a :class:`Schedule`; raises ``ValueError`` naming the choices for an unknown ``name``."""
    return Schedule(name, int(epochs), float(peak))
