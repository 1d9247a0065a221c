"""The task contract: data splits, loss and metrics (with units), and the group action.

Every example is a fixed-size set of tensors, so a split is a dict of tensors with a common leading axis
(:class:`Split`) and a batch is the same dict sliced. A model maps a batch dict to a prediction (a tensor
``[B, ...]`` or a dict of them), and the task knows how the group acts on both.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from relaxbench.errors import UserError
from relaxbench.records import atomic_write_text
from relaxbench.symmetry import GroupElement, centred
from relaxbench.validation import first_error

__all__ = ["Batch", "ClassificationTask", "Metric", "Split", "Task", "TaskError"]

Batch = dict[str, Tensor]


class TaskError(UserError):
    """Bad task parameters or data files (the message names the problem)."""


@dataclass(frozen=True)
class Metric:
    """A metric's name as it appears in records (unit included, e.g. ``"mse_pos"``), unit and direction."""

    name: str
    unit: str
    lower_is_better: bool = True


class Split:
    """A dataset split: tensors ``{key: [N, ...]}`` sharing the leading example axis ``N``."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        sizes = {k: v.shape[0] for k, v in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise TaskError(f"split tensors disagree on the number of examples: {sizes}")
        self.tensors = dict(tensors)
        self.size = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self.size

    def head(self, n: int) -> Batch:
        """The first ``n`` examples as one batch."""
        return {k: v[:n] for k, v in self.tensors.items()}

    def evenly_spaced(self, n: int) -> Batch:
        """``n`` examples ``{key: [n, ...]}`` at evenly spaced positions of the split (first and last included
        for ``n >= 2``; the whole split when ``n >= len(self)``). Deterministic; on a split ordered by class (as
        tetris and shapes store theirs) it takes examples of every class when ``n`` is at least the number of
        classes, where the first ``n`` would be one class."""
        if n >= self.size:
            return self.head(self.size)
        index = torch.linspace(0, self.size - 1, n, dtype=torch.float64).round().long()
        return {k: v[index] for k, v in self.tensors.items()}

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> Iterator[Batch]:
        """Batches of ``batch_size`` (the last may be smaller); shuffled when ``generator`` is given."""
        order = torch.randperm(self.size, generator=generator) if generator is not None else None
        for start in range(0, self.size, batch_size):
            idx = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
            yield {k: v[idx].to(device, non_blocking=True) for k, v in self.tensors.items()}


class Task(abc.ABC):
    """A benchmark task. Subclasses set the class attributes and implement the abstract methods.

    Args:
        params: task parameters from the config (validated by the subclass; unknown keys rejected).
        data_dir: where ``prepare`` caches the generated or converted data.
    """

    name: ClassVar[str]
    kind: ClassVar[
        str
    ]  # spec["kind"]: what a model must take and return (models declare the kinds they support)
    metrics: ClassVar[tuple[Metric, ...]]
    defaults: ClassVar[dict[str, Any]] = {}
    #: JSON schema of each parameter (``{name: schema}``; integers are strict, numbers finite:
    #: :mod:`relaxbench.validation`), checked before any job runs.
    params_schema: ClassVar[dict[str, Any]] = {}
    needs_grad: ClassVar[bool] = False
    generator_version: ClassVar[str] = "1"
    #: The test splits :meth:`load_splits` returns: ``"test"`` (the primary one: the record's ``test``
    #: metrics, the equivariance examples), then any further ones named ``"test_<name>"``, whose metrics the
    #: record keeps in ``tests`` (e.g. the smoke plumes' ``test_domain``).
    test_splits: ClassVar[tuple[str, ...]] = ("test",)
    #: the frame the ``symmetrised`` method averages over (:mod:`relaxbench.symmetrise`): ``"pca"`` (of the
    #: points ``batch[frame_key]``), ``"c4"`` (the exact grid rotations of images), or ``None`` (no frame)
    frame: ClassVar[str | None] = None
    frame_key: ClassVar[str] = "pos"

    def __init__(self, params: Mapping[str, Any] | None, data_dir: str | Path) -> None:
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise TaskError(
                f"task {self.name!r}: unknown parameter(s) {unknown}; choices: {sorted(self.defaults)}"
            )
        problem = first_error(params, {"type": "object", "properties": self.params_schema})
        if problem:
            raise TaskError(f"task {self.name!r}: {problem}")
        self.params = {**self.defaults, **params}
        self.data_dir = Path(data_dir)

    @classmethod
    def check_params(cls, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """``params`` with the defaults filled in, or :class:`TaskError`: unknown keys, the declared
        :attr:`params_schema` (types and ranges) and the task's own checks. Constructing a task only checks
        and stores its parameters (it touches no file), so the config check does exactly that."""
        return cls(params, Path(".")).params

    # --- data -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def prepare(self) -> None:
        """Generate or convert the data into ``self.data_dir`` (idempotent; writes atomically)."""

    @abc.abstractmethod
    def load_splits(self) -> dict[str, Split]:
        """``"train"``, ``"val"`` and the :attr:`test_splits` from ``self.data_dir`` (``prepare`` must have run)."""

    @property
    @abc.abstractmethod
    def spec(self) -> dict[str, Any]:
        """What a model builder needs to know (input and output sizes, number of classes, ...)."""

    def checked_splits(self) -> dict[str, Split]:
        """:meth:`load_splits`, refusing data no run should train on with :class:`TaskError` (a data error, not
        a divergence): NaN or infinite values in any floating-point tensor, and what :meth:`check_split`
        refuses."""
        splits = self.load_splits()
        for name, split in splits.items():
            for key, tensor in split.tensors.items():
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise TaskError(
                        f"task {self.name!r}: the data in {self.data_dir} have non-finite values in split "
                        f"{name!r}, {key!r}; fix the source files and prepare the data again"
                    )
            self.check_split(name, split)
        return splits

    def check_split(self, name: str, split: Split) -> None:
        """Task-specific checks of a loaded split (:class:`TaskError`); none by default."""
        return None

    def prepared(self) -> bool:
        """Whether ``prepare`` has completed for these parameters."""
        return (self.data_dir / "DONE.json").exists()

    def mark_prepared(self, info: Mapping[str, Any]) -> None:
        """Write ``DONE.json`` (parameters and facts about the data) last, atomically."""
        payload = {"task": self.name, "generator_version": self.generator_version, "params": self.params}
        atomic_write_text(self.data_dir / "DONE.json", json.dumps({**payload, **info}, indent=2))

    # --- learning ---------------------------------------------------------------------------------
    @property
    def primary(self) -> Metric:
        """The metric used for model selection and the leaderboard (the first of ``metrics``)."""
        return self.metrics[0]

    def predict(self, model: nn.Module, batch: Batch) -> Tensor | dict[str, Tensor]:
        """The model's prediction on a batch (tasks with derived outputs, e.g. forces, override this)."""
        return model(batch)

    @abc.abstractmethod
    def loss(self, pred: Any, batch: Batch) -> Tensor:
        """Scalar training loss (mean over the batch)."""

    @abc.abstractmethod
    def metric_values(self, pred: Any, batch: Batch) -> dict[str, Tensor]:
        """Per-example values ``[B]`` of ``"loss"`` and of every metric in ``metrics`` that
        :meth:`reduce_metrics` does not derive."""

    def reduce_metrics(self, means: dict[str, float]) -> dict[str, float]:
        """A split's metrics from the means of the per-example values (e.g. a pooled RMSE, the square root of
        the mean squared error); by default the means themselves."""
        return means

    def artifacts(
        self, model: nn.Module, splits: Mapping[str, Split], batch_size: int, device: torch.device
    ) -> dict[str, bytes]:
        """Extra files of a finished run (file name -> content), written into the run directory beside
        ``record.json``, e.g. error curves the record's scalars cannot hold; ``model`` is the evaluated one.
        None by default."""
        return {}

    # --- symmetry ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def sample_group(self, n: int, generator: torch.Generator) -> list[GroupElement]:
        """``n`` seeded group elements for the equivariance metric (exact and approximate flagged)."""

    @abc.abstractmethod
    def act(self, g: GroupElement, batch: Batch) -> Batch:
        """The group element acting on an input batch."""

    @abc.abstractmethod
    def act_output(self, g: GroupElement, pred: Any) -> Any:
        """The group element acting on a prediction."""

    def input_dependent(self, pred: Any, batch: Batch) -> Any:
        """The part of a prediction ``pred`` (of the examples ``batch``) that depends on the input, same layout as
        ``pred``: the yardstick of the relative equivariance error (:mod:`relaxbench.symmetry`), so that an
        input-independent offset (a classifier's bias, a position the model adds back) cannot dilute it.

        Default: ``pred`` centred over the batch's examples (needs at least 2). A task whose prediction adds an
        input back overrides this (N-body: the predicted displacement ``pred - loc``)."""
        return centred(pred)

    def act_model_output(self, g: GroupElement, output: Any) -> Any:
        """The group element acting on the model's raw output (what :meth:`predict` derives the prediction from);
        the prediction's action unless the task derives its prediction (e.g. forces from an invariant energy)."""
        return self.act_output(g, output)


class ClassificationTask(Task):
    """An invariant classification task: ``batch["label"] [B]`` int64, predictions are logits ``[B, classes]``.

    Cross-entropy loss; per-example ``error_rate`` (the primary metric) and ``accuracy``; the group acts
    trivially on the logits. Subclasses supply the data, the spec and the group's action on inputs.
    """

    metrics = (Metric("error_rate", "fraction", True), Metric("accuracy", "fraction", False))

    def check_split(self, name: str, split: Split) -> None:
        labels, classes = split.tensors["label"], self.spec["num_classes"]
        if len(labels) and (labels.min() < 0 or labels.max() >= classes):
            raise TaskError(
                f"task {self.name!r}: the data in {self.data_dir} have labels outside 0..{classes - 1} in split "
                f"{name!r}; fix the source files and prepare the data again"
            )

    def loss(self, pred: Tensor, batch: Batch) -> Tensor:
        return torch.nn.functional.cross_entropy(pred, batch["label"])

    def metric_values(self, pred: Tensor, batch: Batch) -> dict[str, Tensor]:
        correct = (pred.argmax(dim=1) == batch["label"]).double()
        return {
            "loss": torch.nn.functional.cross_entropy(pred, batch["label"], reduction="none"),
            "error_rate": 1.0 - correct,
            "accuracy": correct,
        }

    def act_output(self, g: GroupElement, pred: Tensor) -> Tensor:
        return pred
