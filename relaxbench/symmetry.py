"""Group elements, and the equivariance-error metric shared by the trainer and the unit tests.

The metric of a model ``f`` on inputs ``x_1 .. x_n`` is

    abs = mean_i max_g ||f(g x_i) - g f(x_i)||                   (units of the output)
    rel = abs / sqrt(mean_i ||s(f(x))_i||^2)                      (dimensionless)

over seeded group samples ``g``, evaluated in float64 (or the dtype asked for) where the model allows, with
all group elements in one batched forward pass. The yardstick ``s`` is the *input-dependent part* of the
output, which each task names (:meth:`relaxbench.tasks.base.Task.input_dependent`): by default the output
centred over the examples, for N-body the predicted displacement ``f(x) - loc``. Dividing by ``||f(x)||``
instead would measure the offset, not the model: a classifier's logits at initialisation can be almost all
head bias (default VN-PointNet: ``||f(x)||`` is 3e5 times the part that the input moves), and an N-body
prediction is mostly the input position it starts from (5x the displacement for SEGNN, 20x for EGNN at
initialisation), so the same equivariance defect would read that many times smaller.
Both numbers are recorded. Group elements carry an ``exact`` flag: on a pixel grid only multiples of 90
degrees act exactly, other rotations interpolate, so the two are reported apart (``exact`` and ``approx``);
for point data every rotation is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "EquivarianceError",
    "GroupElement",
    "centred",
    "equivariance_error",
    "flatten_output",
    "model_equivariance_error",
    "random_rotation_matrices",
]

Batch = Mapping[str, Tensor]
Output = Tensor | Mapping[str, Tensor]


@dataclass(frozen=True)
class GroupElement:
    """One group element as a task understands it.

    Attributes:
        name: human-readable label, e.g. ``"rot90"`` or ``"R#3"``.
        exact: whether the element acts exactly on the data representation (e.g. a 90-degree grid rotation).
        data: the task's parameters of the element (rotation matrix ``[3, 3]``, angle in radians, permutation).
    """

    name: str
    exact: bool
    data: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class EquivarianceError:
    """Equivariance errors of one evaluation; ``None`` where a kind of element was not sampled.

    Attributes:
        exact, approx: relative errors ``abs / scale`` (dimensionless), exact and approximate elements apart.
        exact_abs, approx_abs: absolute errors ``mean_x max_g ||f(g x) - g f(x)||`` (units of the output).
        scale: ``sqrt(mean_x ||s(f(x))||^2)``, the RMS size of the output's input-dependent part ``s``.
    """

    exact: float | None
    approx: float | None
    dtype: str
    n_examples: int
    n_elements: int
    exact_abs: float | None = None
    approx_abs: float | None = None
    scale: float | None = None


def random_rotation_matrices(n: int, generator: torch.Generator, dtype=torch.float64) -> Tensor:
    """``[n, 3, 3]`` Haar-uniform rotations in SO(3) (QR of Gaussian matrices with sign fix, det = +1)."""
    a = torch.randn(n, 3, 3, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    det = torch.det(q)
    q[:, :, 0] = q[:, :, 0] * det.unsqueeze(-1)
    return q.to(dtype)


def flatten_output(output: Output) -> Tensor:
    """A model output (tensor ``[B, ...]`` or dict of them) as one ``[B, D]`` tensor (dict keys sorted)."""
    if isinstance(output, Tensor):
        return output.reshape(output.shape[0], -1)
    return torch.cat([output[k].reshape(output[k].shape[0], -1) for k in sorted(output)], dim=1)


def centred(output: Output, batch: Batch | None = None) -> Output:
    """``output`` minus its mean over the examples (axis 0), key by key for a dict: the default input-dependent
    part of an output (:meth:`relaxbench.tasks.base.Task.input_dependent`). ``batch`` is not used.

    Raises ``ValueError`` for a single example (centring it leaves nothing to measure)."""
    if len(flatten_output(output)) < 2:
        raise ValueError("centring an output over its examples needs at least 2 examples, got 1")
    if isinstance(output, Tensor):
        return output - output.mean(0, keepdim=True)
    return {k: v - v.mean(0, keepdim=True) for k, v in output.items()}


def _rows(output: Output, start: int, stop: int) -> Output:
    if isinstance(output, Tensor):
        return output[start:stop]
    return {k: v[start:stop] for k, v in output.items()}


def _detached(output: Output) -> Output:
    if isinstance(output, Tensor):
        return output.detach()
    return {k: v.detach() for k, v in output.items()}


def _cat_outputs(outputs: Sequence[Output]) -> Output:
    """Concatenate tensors, or dicts of tensors key by key, along the batch axis."""
    if isinstance(outputs[0], Tensor):
        return torch.cat(list(outputs))
    return {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}


def equivariance_error(
    f: Callable[[Batch], Output],
    batch: Batch,
    elements: Sequence[GroupElement],
    act: Callable[[GroupElement, Batch], Batch],
    act_output: Callable[[GroupElement, Output], Output],
    dtype: torch.dtype = torch.float64,
    max_batch: int | None = None,
    input_dependent: Callable[[Output, Batch], Output] = centred,
) -> EquivarianceError:
    """``abs = mean_x max_g ||f(g x) - g f(x)||`` and ``rel = abs / sqrt(mean_x ||s(f(x))||^2)`` (module
    docstring), for exact and approximate elements separately.

    ``x`` and all its transforms ``g x`` are stacked into one batch of ``(1 + len(elements)) B`` examples and
    ``f`` is called on it once (or on chunks of at most ``max_batch`` examples), so a small model pays its
    per-call overhead once, not once per element. ``f`` must treat examples independently (as every model in
    eval mode does).

    Args:
        f: the function under test, batch dict -> output (tensor ``[B, ...]`` or dict of tensors).
        batch: inputs, a dict of tensors with a common leading batch axis ``B``.
        elements: the sampled group elements.
        act: the group's action on inputs; ``act_output``: on outputs.
        dtype: reported dtype label (the caller is responsible for casting ``f`` and ``batch``).
        max_batch: most examples per call of ``f`` (``None``: all in one call).
        input_dependent: ``s(f(x), x)``, the part of the output that depends on the input (the relative
            error's yardstick); by default the output centred over the ``B >= 2`` examples (:func:`centred`).

    A model whose input-dependent part is zero has a relative error of 0 if it is exactly equivariant and an
    astronomically large one otherwise (the scale is clamped at the dtype's smallest positive number).
    """
    n = next(iter(batch.values())).shape[0]
    stacked = _cat_outputs([batch, *(act(g, batch) for g in elements)])
    total = (1 + len(elements)) * n
    step = total if max_batch is None else max(1, max_batch)
    out = _cat_outputs([_detached(f(_rows(stacked, i, i + step))) for i in range(0, total, step)])
    fx = _rows(out, 0, n)
    signal = flatten_output(input_dependent(fx, batch))
    scale = signal.pow(2).sum(1).mean().sqrt()
    worst: dict[bool, Tensor] = {}
    for i, g in enumerate(elements, start=1):
        lhs = flatten_output(_rows(out, i * n, (i + 1) * n))
        rhs = flatten_output(act_output(g, fx))
        err = (lhs - rhs).norm(dim=1)
        worst[g.exact] = torch.maximum(worst[g.exact], err) if g.exact in worst else err
    tiny = torch.finfo(scale.dtype).tiny

    def summary(kind: bool) -> tuple[float | None, float | None]:
        if kind not in worst:
            return None, None
        absolute = worst[kind].mean()
        return float(absolute / scale.clamp_min(tiny)), float(absolute)

    (exact, exact_abs), (approx, approx_abs) = summary(True), summary(False)
    return EquivarianceError(
        exact=exact,
        approx=approx,
        dtype=str(dtype).replace("torch.", ""),
        n_examples=n,
        n_elements=len(elements),
        exact_abs=exact_abs,
        approx_abs=approx_abs,
        scale=float(scale),
    )


def _cast(batch: Batch, dtype: torch.dtype) -> dict[str, Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}


@contextmanager
def _cast_in_place(model: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Within the block, ``model``'s floating parameters and buffers are ``dtype`` copies; afterwards the
    original tensor objects are back in place (so optimisers and tied weights are untouched).

    Works on every module's own parameter and buffer tables, once per module and once per tensor: a module or
    tensor shared between two places gets a single copy, and the restore cannot confuse the two (as
    ``torch.func.functional_call`` does for tied weights).
    """
    saved: list[tuple[dict, str, Tensor]] = []
    copies: dict[int, Tensor] = {}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for key, tensor in table.items():
                if tensor is not None and tensor.is_floating_point():
                    if id(tensor) not in copies:
                        copies[id(tensor)] = tensor.detach().to(dtype)
                    saved.append((table, key, tensor))
                    table[key] = copies[id(tensor)]
    try:
        yield
    finally:
        for table, key, tensor in reversed(saved):
            table[key] = tensor


def model_equivariance_error(
    model: nn.Module,
    task: Any,
    batch: Batch,
    n_elements: int,
    seed: int,
    dtype: torch.dtype = torch.float64,
    max_batch: int | None = None,
) -> EquivarianceError:
    """The metric for a trained model on a task, evaluated in ``dtype`` with the model in eval mode, relative to
    the task's input-dependent part of the output (``task.input_dependent``).

    The model is not copied (deep-copying e3nn models costs more than the metric): its parameters and
    buffers are swapped for ``dtype`` copies for the duration of the call, and its tensors and train/eval mode
    are restored afterwards. Falls back to float32 if the model cannot run in float64; the returned ``dtype``
    says which was used. Group elements come from ``task.sample_group(n_elements, generator)`` with a
    generator seeded by ``seed``; ``max_batch`` bounds the examples per forward call
    (:func:`equivariance_error`).
    """
    generator = torch.Generator().manual_seed(seed)
    elements = task.sample_group(n_elements, generator)
    was_training = model.training
    model.eval()  # before the copies: escnn caches its expanded filters as buffers in eval mode
    try:
        for trial_dtype in (dtype, torch.float32) if dtype != torch.float32 else (torch.float32,):
            try:
                with _cast_in_place(model, trial_dtype):
                    with torch.enable_grad() if getattr(task, "needs_grad", False) else torch.no_grad():
                        return equivariance_error(
                            lambda b: task.predict(model, b),
                            _cast(batch, trial_dtype),
                            elements,
                            task.act,
                            task.act_output,
                            trial_dtype,
                            max_batch,
                            task.input_dependent,
                        )
            except (RuntimeError, TypeError) as err:  # a model that cannot run in float64
                last = err
        raise RuntimeError(f"equivariance error could not be evaluated: {last}")
    finally:
        model.train(was_training)
