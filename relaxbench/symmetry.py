"""Group elements, and the equivariance-error metric shared by the trainer and the unit tests.

The metric of a model ``f`` on inputs ``x`` is

    err = mean_x max_g ||f(g x) - g f(x)|| / ||f(x)||

over seeded group samples ``g``, evaluated in float64 where the model allows. Group elements carry an
``exact`` flag: on a pixel grid only multiples of 90 degrees act exactly, other rotations interpolate, so
the two are reported apart (``exact`` and ``approx``); for point data every rotation is exact.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "EquivarianceError",
    "GroupElement",
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
    """Relative equivariance errors (dimensionless); ``None`` where a kind of element was not sampled."""

    exact: float | None
    approx: float | None
    dtype: str
    n_examples: int
    n_elements: int

    def as_dict(self, prefix: str) -> dict[str, float | None]:
        return {f"{prefix}_exact": self.exact, f"{prefix}_approx": self.approx}


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


def equivariance_error(
    f: Callable[[Batch], Output],
    batch: Batch,
    elements: Sequence[GroupElement],
    act: Callable[[GroupElement, Batch], Batch],
    act_output: Callable[[GroupElement, Output], Output],
    dtype: torch.dtype = torch.float64,
) -> EquivarianceError:
    """``mean_x max_g ||f(g x) - g f(x)|| / ||f(x)||`` for exact and approximate elements separately.

    Args:
        f: the function under test, batch dict -> output (tensor ``[B, ...]`` or dict of tensors).
        batch: inputs, a dict of tensors with a common leading batch axis ``B``.
        elements: the sampled group elements.
        act: the group's action on inputs; ``act_output``: on outputs.
        dtype: reported dtype label (the caller is responsible for casting ``f`` and ``batch``).
    """
    fx = f(batch)
    fx_flat = flatten_output(fx)
    scale = fx_flat.norm(dim=1).clamp_min(torch.finfo(fx_flat.dtype).tiny)
    worst: dict[bool, Tensor] = {}
    for g in elements:
        lhs = flatten_output(f(act(g, batch)))
        rhs = flatten_output(act_output(g, fx))
        rel = (lhs - rhs).norm(dim=1) / scale
        worst[g.exact] = torch.maximum(worst[g.exact], rel) if g.exact in worst else rel

    def summary(kind: bool) -> float | None:
        return float(worst[kind].mean()) if kind in worst else None

    return EquivarianceError(
        exact=summary(True),
        approx=summary(False),
        dtype=str(dtype).replace("torch.", ""),
        n_examples=int(fx_flat.shape[0]),
        n_elements=len(elements),
    )


def _cast(batch: Batch, dtype: torch.dtype) -> dict[str, Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}


def model_equivariance_error(
    model: nn.Module,
    task: Any,
    batch: Batch,
    n_elements: int,
    seed: int,
    dtype: torch.dtype = torch.float64,
) -> EquivarianceError:
    """The metric for a trained model on a task, on a copy of the model cast to ``dtype`` (eval mode).

    Falls back to float32 if the model cannot run in float64; the returned ``dtype`` says which was used.
    Group elements come from ``task.sample_group(n_elements, generator)`` with a generator seeded by ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    elements = task.sample_group(n_elements, generator)
    for trial_dtype in (dtype, torch.float32) if dtype != torch.float32 else (torch.float32,):
        try:
            probe = copy.deepcopy(model).to(trial_dtype).eval()
            cast_batch = _cast(batch, trial_dtype)
            with torch.enable_grad() if getattr(task, "needs_grad", False) else torch.no_grad():
                return equivariance_error(
                    lambda b: task.predict(probe, b),
                    cast_batch,
                    elements,
                    task.act,
                    task.act_output,
                    trial_dtype,
                )
        except (RuntimeError, TypeError) as err:  # a model that cannot run in float64
            last = err
    raise RuntimeError(f"equivariance error could not be evaluated: {last}")

