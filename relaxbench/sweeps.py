"""Sweep axes of a model entry: which settings a config varies, and the cells (points) they expand into.

A model entry may list ``sweeps``; each sweep maps axis names to lists of values, its axes are crossed, and
the entry's cells are the union of the sweeps' points (a point that two sweeps share runs once)::

    segnn:
      tasks: [nbody]
      params: {hidden: 64, layers: 4, l_max: 1}
      sweeps:
        - {params.layers: [2, 4, 6, 8]}              # one axis at a time (the paper's Fig. 4) ...
        - {nbody.n_train: [100, 300, 1000, 3000]}
        - {params.layers: [2, 8], nbody.n_train: [100, 3000]}   # ... or crossed

An axis is ``params.<key>`` (a keyword of the model's ``build``), ``training.<key>`` (a training setting) or
``<task>.<key>`` (a parameter of one of the entry's tasks; it applies to that task's runs only). In a sweep
that does not name an axis, the axis keeps the entry's **base** value: the model's ``params``, its resolved
``training`` settings, or the config's ``tasks`` entry / the task's default.

A cell is identified by its *label*, the axes whose value differs from the base (``params.layers=2``,
``params.layers=2+nbody.n_train=100``); the base point has the empty label, so it is the entry's plain run
folder, and adding a sweep never renames the runs that already exist. The folder name of a cell is
``<model>+<label>`` (:func:`folder`); it must pass :func:`relaxbench.layout.path_component` like every folder
name (letters, digits and ``_ . = + -``, at most 64 characters), so a value such as ``"16x0e + 8x1o"`` cannot
be an axis value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Cell",
    "SweepError",
    "apply_axes",
    "axis_kind",
    "cells",
    "check_axes",
    "folder",
    "label",
]

#: Training settings that change how a run executes, not what it computes: never an axis.
EXECUTION_ONLY = ("resume", "checkpoint_every")
#: No base value: the axis is named in every sweep of the entry (and appears in every label).
NO_BASE = object()


class SweepError(ValueError):
    """A sweep that names an unknown axis or gives a bad value; the message names the axis and the choices."""


@dataclass(frozen=True)
class Cell:
    """One point of a model entry's sweeps on one task.

    ``axes``: every axis of the entry that applies to the task with its value here, in the order the sweeps
    name them (values JSON-like; lists become tuples so that the cell is hashable). ``label``: the axes
    that differ from the base, ``name=value`` joined by ``,`` (empty for the base point). ``sweeps``: the
    indices of the sweeps the point belongs to (the report draws one figure per sweep).
    """

    axes: tuple[tuple[str, Any], ...] = ()
    label: str = ""
    sweeps: tuple[int, ...] = ()


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return "-".join(_text(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


def label(axes: Sequence[tuple[str, Any]]) -> str:
    """``name=value`` of each axis, joined by ``+`` (list values joined by ``-``)."""
    return "+".join(f"{name}={_text(value)}" for name, value in axes)


def folder(model: str, cell_label: str) -> str:
    """The run folder name of a model entry's cell: the entry's key, or ``<key>+<label>`` off the base (a
    folder name only if :func:`relaxbench.layout.path_component` admits it, which the config check asks)."""
    return f"{model}+{cell_label}" if cell_label else model


def axis_kind(name: str, tasks: Sequence[str]) -> tuple[str, str]:
    """``("params" | "training" | <task>, key)`` of an axis name; :class:`SweepError` for any other name."""
    head, _, key = name.partition(".")
    if key and (head in ("params", "training") or head in tasks):
        return head, key
    raise SweepError(
        f"unknown axis {name!r}; an axis is 'params.<build parameter>', 'training.<key>' or "
        f"'<task>.<parameter>' with <task> one of {sorted(tasks)}"
    )


def check_axes(
    model: Mapping[str, Any],
    training: Mapping[str, Any],
    training_keys: Sequence[str],
    task_defaults: Mapping[str, Mapping[str, Any]],
    task_settings: Mapping[str, Mapping[str, Any]],
) -> None:
    """Check a model entry's sweep axes and values against what they set (:class:`SweepError` naming the axis).

    Args:
        model: the entry (``tasks``, ``params``, ``sweeps``).
        training: the entry's resolved training settings (base values of ``training.*`` axes).
        training_keys: the training settings that exist.
        task_defaults: each task's parameters with their defaults.
        task_settings: the config's ``tasks`` entries.
    """
    sweeps = model.get("sweeps", [])
    for sweep in sweeps:
        for name, values in sweep.items():
            head, key = axis_kind(name, model["tasks"])
            if head == "training" and (key not in training_keys or key in EXECUTION_ONLY):
                choices = sorted(set(training_keys) - set(EXECUTION_ONLY))
                raise SweepError(f"axis {name!r}: unknown training setting {key!r}; choices: {choices}")
            if head not in ("params", "training") and key not in task_defaults[head]:
                raise SweepError(
                    f"axis {name!r}: unknown parameter {key!r} of task {head!r}; "
                    f"choices: {sorted(task_defaults[head])}"
                )
            base = _base(name, model, training, task_defaults, task_settings)
            reference = None if base is NO_BASE else base
            if head not in ("params", "training") and reference is None:
                reference = task_defaults[head][key]
            for value in values:
                if reference is not None and not _same_kind(value, reference):
                    raise SweepError(
                        f"axis {name!r}: value {value!r} ({type(value).__name__}) does not fit the base "
                        f"value {reference!r} ({type(reference).__name__})"
                    )
    names = [n for sweep in sweeps for n in sweep]
    for name in dict.fromkeys(names):
        if not all(name in sweep for sweep in sweeps) and (
            _base(name, model, training, task_defaults, task_settings) is NO_BASE
        ):
            raise SweepError(
                f"axis {name!r} is left out of some sweeps, where it keeps its base value, but "
                f"'params' does not set {name.partition('.')[2]!r}: give it there"
            )


def _same_kind(value: Any, reference: Any) -> bool:
    """Whether ``value`` may replace ``reference`` (numbers for numbers, bools for bools, ...)."""
    if isinstance(reference, bool) or isinstance(value, bool):
        return isinstance(reference, bool) and isinstance(value, bool)
    if isinstance(reference, (int, float)):
        return isinstance(value, int) if isinstance(reference, int) else isinstance(value, (int, float))
    if isinstance(reference, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(reference))


def _base(
    name: str,
    model: Mapping[str, Any],
    training: Mapping[str, Any],
    task_defaults: Mapping[str, Mapping[str, Any]],
    task_settings: Mapping[str, Mapping[str, Any]],
) -> Any:
    head, _, key = name.partition(".")
    if head == "params":
        return model.get("params", {}).get(key, NO_BASE)
    if head == "training":
        return training.get(key, NO_BASE)
    return {**task_defaults[head], **task_settings.get(head, {})}[key]


def cells(
    model: Mapping[str, Any],
    task: str,
    training: Mapping[str, Any],
    task_defaults: Mapping[str, Mapping[str, Any]],
    task_settings: Mapping[str, Mapping[str, Any]],
) -> list[Cell]:
    """The cells of a (checked) model entry on one of its tasks, in the order the sweeps name them; one
    cell with no axes for an entry without sweeps (or whose sweeps only concern its other tasks)."""
    sweeps = [
        {n: v for n, v in sweep.items() if n.partition(".")[0] in ("params", "training", task)}
        for sweep in model.get("sweeps", [])
    ]
    names = list(dict.fromkeys(n for sweep in sweeps for n in sweep))
    if not names:
        return [Cell()]
    bases = {n: _base(n, model, training, task_defaults, task_settings) for n in names}
    found: dict[tuple, list[int]] = {}
    for index, sweep in enumerate(sweeps):
        points: list[dict[str, Any]] = [{}]
        for name, values in sweep.items():
            points = [{**p, name: _frozen(v)} for p in points for v in values]
        for point in points:
            axes = tuple((n, point.get(n, _frozen(bases[n]))) for n in names)
            found.setdefault(axes, []).append(index)
    return [
        Cell(axes, label([(n, v) for n, v in axes if v != _frozen(bases[n])]), tuple(dict.fromkeys(where)))
        for axes, where in found.items()
    ]


def apply_axes(
    axes: Sequence[tuple[str, Any]],
    task_params: Mapping[str, Any],
    task_defaults: Mapping[str, Any],
    model_params: Mapping[str, Any],
    training: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The task parameters, model parameters and training settings of a cell (copies, axes applied).

    A task axis at the value the task has anyway (``task_params`` over ``task_defaults``) is left out of the
    task parameters, so that the base point of a sweep keeps the data key (and run hash) it had before the
    entry was swept.
    """
    out = {"task": dict(task_params), "params": dict(model_params), "training": dict(training)}
    current = {**task_defaults, **task_params}
    for name, value in axes:
        head, _, key = name.partition(".")
        value = list(value) if isinstance(value, tuple) else value
        if head in ("params", "training"):
            out[head][key] = value
        elif current.get(key) != value:
            out["task"][key] = value
    return out["task"], out["params"], out["training"]
