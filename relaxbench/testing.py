"""The contract every relaxbench model passes, as a library (like e3nn's ``assert_equivariant``).

The comparison of training methods rests on four properties of a model and its relaxed twin (built from one
seed, ``relaxed=False`` and ``relaxed=True``); a user's model calls the same helpers in its own tests
(``examples/my_model.py``, ``tests/workflow/test_example_model.py``), and ``tests/test_contract.py`` runs them
on every registered model and every task kind it declares:

1. :func:`assert_equivariant`: the plain model is equivariant under the task's group action.
2. :func:`assert_projection_exact`: the relaxed model at theta = 0 equals the plain one bit for bit.
3. :func:`assert_relaxed_breaks_symmetry`: with theta > 0 and random free maps it is not equivariant (the
   tester can fail), and projected again it is.
4. :func:`assert_penalty_null_space`: every relaxed layer's Lie penalty vanishes on an equivariant free map and
   not on a random one; :func:`assert_theta_reaches_every_layer`: theta > 0 reaches every free branch, theta = 0
   none, and the penalty's gradient reaches the free branches only.

And one of expressivity, :func:`assert_separates`: a model must tell apart inputs its group does not identify
(an SO(3)- but not O(3)-invariant classifier separates a shape from its mirror image, :func:`mirrored`).

Tolerances are tied to the dtype: :func:`tolerance` is the square root of the dtype's machine epsilon (1.5e-8
for float64, 3.5e-4 for float32), i.e. at least half of the significant digits agree. Check in float64
where the model allows it (build it under ``torch.set_default_dtype(torch.float64)``, so that constants such
as e3nn's Clebsch-Gordan coefficients are not rounded to float32 first); a model whose equivariant parts are
computed in float32 whatever its dtype (escnn samples its kernel bases in float32) is checked with
``tolerance(torch.float32)``. All relative errors are the metric of :mod:`relaxbench.symmetry`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from relaxbench.families import fields
from relaxbench.relax import RelaxedLayer, relaxation_penalty, relaxed_layers, set_theta
from relaxbench.relax.dense import DenseRelaxedLinear
from relaxbench.relax.free_mlp import RelaxedFreeMLP
from relaxbench.symmetry import EquivarianceError, flatten_output, model_equivariance_error

__all__ = [
    "assert_equivariant",
    "assert_penalty_null_space",
    "assert_projection_exact",
    "assert_relaxed_breaks_symmetry",
    "assert_separates",
    "assert_theta_reaches_every_layer",
    "equivariant_free_map",
    "mirrored",
    "randomise_free_maps",
    "tolerance",
]

Batch = Mapping[str, Tensor]


def tolerance(dtype: torch.dtype) -> float:
    """``sqrt(eps)`` of ``dtype``: the largest relative error still counted as exact (half the digits)."""
    return torch.finfo(dtype).eps ** 0.5


def _outputs(task: Any, model: nn.Module, batch: Batch) -> Tensor:
    """The task's prediction as one ``[B, D]`` tensor (gradients enabled where the task needs them)."""
    with torch.enable_grad() if getattr(task, "needs_grad", False) else torch.no_grad():
        return flatten_output(task.predict(model, batch)).detach()


def assert_equivariant(
    model: nn.Module,
    task: Any,
    batch: Batch,
    *,
    dtype: torch.dtype = torch.float64,
    tol: float | None = None,
    n_elements: int = 4,
    seed: int = 0,
) -> EquivarianceError:
    """The model's equivariance error under ``n_elements`` of the task's group elements (exact ones only) is
    below ``tol`` (default :func:`tolerance` of the dtype the metric ran in). Returns the error."""
    err = model_equivariance_error(model, task, batch, n_elements, seed, dtype=dtype)
    limit = tolerance(getattr(torch, err.dtype)) if tol is None else tol
    assert err.exact is not None, "the task sampled no exact group element"
    assert err.exact < limit, f"equivariance error {err.exact:.3g} >= {limit:.3g} ({err.dtype})"
    return err


def randomise_free_maps(model: nn.Module, std: float = 0.3, seed: int = 1) -> None:
    """Every parameter of every free branch drawn from ``N(0, std^2)`` (a seeded stream of its own)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in relaxed_layers(model):
            for param in layer.free.parameters():
                param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * std)


def assert_projection_exact(plain: nn.Module, relaxed: nn.Module, task: Any, batch: Batch) -> None:
    """``relaxed`` (the twin of ``plain`` from the same seed) has relaxed layers, ``plain`` none, and at theta = 0
    it computes bit for bit what ``plain`` computes, in train and in eval mode, even with large free maps
    (which this sets, in place). Dropout masks are drawn from one seed for both."""
    assert list(relaxed_layers(relaxed)), "the relaxed model has no relaxed layers"
    assert not list(relaxed_layers(plain)), "the plain model has relaxed layers"
    randomise_free_maps(relaxed, std=1.0)
    set_theta(relaxed, 0.0)
    for training in (True, False):
        outputs = []
        for model in (plain, relaxed):
            model.train(training)
            torch.manual_seed(5)
            outputs.append(_outputs(task, model, batch))
        assert torch.equal(*outputs), f"theta = 0 differs from the plain model (train={training})"


def assert_relaxed_breaks_symmetry(
    relaxed: nn.Module,
    task: Any,
    batch: Batch,
    *,
    theta: float = 0.5,
    dtype: torch.dtype = torch.float64,
    tol: float | None = None,
    n_elements: int = 4,
    seed: int = 0,
) -> EquivarianceError:
    """With random free maps (set in place) and ``theta`` the model is not equivariant: its error exceeds 1000
    times the tolerance; projected (theta = 0) it is equivariant again. Returns the error at ``theta``."""
    randomise_free_maps(relaxed)
    set_theta(relaxed, theta)
    err = model_equivariance_error(relaxed, task, batch, n_elements, seed, dtype=dtype)
    limit = tolerance(getattr(torch, err.dtype)) if tol is None else tol
    assert err.exact is not None and err.exact > 1e3 * limit, (
        f"a random free branch at theta={theta} leaves the model equivariant (error {err.exact:.3g})"
    )
    set_theta(relaxed, 0.0)
    assert_equivariant(relaxed, task, batch, dtype=dtype, tol=tol, n_elements=n_elements, seed=seed)
    return err


def _relaxed_forward(model: nn.Module, task: Any, batch: Batch, theta: float) -> Any:
    """One training-mode forward at ``theta`` (the relaxed layers record their inputs)."""
    set_theta(model, theta)
    model.train()
    torch.manual_seed(5)
    return task.predict(model, batch)


def assert_theta_reaches_every_layer(relaxed: nn.Module, task: Any, batch: Batch) -> None:
    """theta = 0 evaluates no free branch; theta > 0 evaluates every one (each gets a gradient from the task
    loss); and the penalty's gradient reaches the free branches and nothing else."""
    layers = list(relaxed_layers(relaxed))
    assert layers, "the model has no relaxed layers"
    randomise_free_maps(relaxed)
    _relaxed_forward(relaxed, task, batch, 0.0)
    assert all(layer._last_input is None for layer in layers), "a free branch ran at theta = 0"
    relaxed.zero_grad()
    task.loss(_relaxed_forward(relaxed, task, batch, 0.5), batch).backward()
    for i, layer in enumerate(layers):
        grads = [p.grad for p in layer.free.parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), (
            f"theta does not reach relaxed layer {i}"
        )
    relaxed.zero_grad()
    _relaxed_forward(relaxed, task, batch, 0.5)
    penalty = relaxation_penalty(relaxed)
    (penalty["lie"] + penalty["norm"]).backward()
    free = {id(p) for layer in layers for p in layer.free.parameters()}
    for name, p in relaxed.named_parameters():
        touched = p.grad is not None and bool(p.grad.abs().sum() > 0)
        if id(p) in free:
            continue
        assert not touched, f"the penalty's gradient reaches {name}, which is not a free branch"


def _commutant_projection(weight: Tensor, gen_in: Tensor, gen_out: Tensor) -> Tensor:
    """The orthogonal projection of ``weight [d_out, d_in]`` onto the maps commuting with the generators:
    the null space of ``W -> (W A_a - B_a W)_a``, by an eigendecomposition (small layers only)."""
    d_out, d_in = weight.shape
    eye_in, eye_out = torch.eye(d_in, dtype=torch.float64), torch.eye(d_out, dtype=torch.float64)
    # row-major vec: vec(W A) = (I_out x A^T) vec(W), vec(B W) = (B x I_in) vec(W)
    ops = [torch.kron(eye_out, a.t()) - torch.kron(b, eye_in) for a, b in zip(gen_in, gen_out)]
    gram = sum(op.t() @ op for op in ops)
    values, vectors = torch.linalg.eigh(gram)
    null = vectors[:, values < 1e-9 * values.max().clamp_min(1.0)]
    flat = weight.detach().to(torch.float64).reshape(-1)
    return (null @ (null.t() @ flat)).reshape(d_out, d_in)


class _EquivariantPart(nn.Module):
    """``x = [y, c] -> f_eq(y)``: an equivariant (nonlinear) free map for a :class:`RelaxedFreeMLP`."""

    def __init__(self, equivariant: nn.Module, d_y: int) -> None:
        super().__init__()
        object.__setattr__(self, "equivariant", equivariant)  # not a second registration of its parameters
        self.d_y = d_y
        self.weight = nn.Parameter(torch.zeros(()))  # an anchor for the layer's dtype and device

    def forward(self, x: Tensor) -> Tensor:
        return self.equivariant(x[..., : self.d_y])


def equivariant_free_map(layer: RelaxedLayer, max_unknowns: int = 1200) -> None:
    """Set ``layer``'s free map, in place, to an equivariant one (same shapes), for the penalty's null space.

    - :class:`~relaxbench.relax.dense.DenseRelaxedLinear`: its current weight projected onto the maps that
      commute with its generators (exact), bias zero; layers with more than ``max_unknowns`` weights take the
      equivariant branch's own matrix instead (where it has one).
    - :class:`~relaxbench.families.fields.RelaxedR2Conv`: its kernel averaged over the group its penalty
      generators generate (exact on the grid).
    - :class:`~relaxbench.relax.free_mlp.RelaxedFreeMLP`: the equivariant branch itself, ``[y, c] -> f_eq(y)``.
    """
    with torch.no_grad():
        if isinstance(layer, DenseRelaxedLinear):
            weight = layer.free.weight
            if weight.numel() <= max_unknowns:
                eq = _commutant_projection(weight, layer.gen_in, layer.gen_out)
            elif layer._equivariant_matrix is not None:
                matrix = layer._equivariant_matrix()
                eq = matrix if layer.feature_dim == 1 else matrix.t()
            else:
                raise ValueError(
                    f"{type(layer).__name__} with {weight.numel()} weights: too large to project"
                )
            weight.copy_(eq.to(weight))
            if layer.free.bias is not None:
                layer.free.bias.zero_()
        elif isinstance(layer, fields.RelaxedR2Conv):
            layer.free.weight.copy_(fields.group_averaged_kernel(layer).to(layer.free.weight))
        elif isinstance(layer, RelaxedFreeMLP):
            layer.free = _EquivariantPart(layer.equivariant, layer.d_y).to(layer.free_weight_anchor())
        else:
            raise TypeError(
                f"no equivariant free map known for {type(layer).__name__}; pass equivariant_free="
            )


def assert_penalty_null_space(
    relaxed: nn.Module,
    task: Any,
    batch: Batch,
    *,
    equivariant_free: Callable[[RelaxedLayer], None] = equivariant_free_map,
    tol: float | None = None,
) -> list[tuple[float, float]]:
    """For every relaxed layer the Lie penalty of an equivariant free map (``equivariant_free`` sets it) is zero
    relative to the free activation, ``sqrt(ld / norm) < tol`` (default :func:`tolerance` of float64), and that
    of a random one is not (``> 1e-3``), unless the group acts trivially on the layer's input (rotations on
    scalars: every map of scalars is equivariant; at least one layer must see a non-trivial action). Returns
    ``(ld, norm)`` of the equivariant free maps, per layer."""
    limit = tolerance(torch.float64) if tol is None else tol
    layers = list(relaxed_layers(relaxed))
    assert layers, "the model has no relaxed layers"
    randomise_free_maps(relaxed)
    _relaxed_forward(relaxed, task, batch, 0.5)
    acting = [layer for layer in layers if not _acts_trivially(layer)]
    assert acting, "the group acts trivially on the input of every relaxed layer"
    for i, layer in enumerate(acting):
        ld, sq = (float(t) for t in layer.penalty_terms())
        assert sq > 0 and (ld / sq) ** 0.5 > 1e-3, f"relaxed layer {i}: a random free map is not penalised"
    for layer in layers:
        equivariant_free(layer)
    _relaxed_forward(relaxed, task, batch, 0.5)
    terms = []
    for i, layer in enumerate(layers):
        ld, sq = (float(t) for t in layer.penalty_terms())
        assert sq > 0, f"relaxed layer {i}: the equivariant free map is zero on the data"
        assert (ld / sq) ** 0.5 < limit, f"relaxed layer {i}: an equivariant free map is penalised ({ld:.3g})"
        terms.append((ld, sq))
    return terms


def _acts_trivially(layer: RelaxedLayer) -> bool:
    """Whether every generator leaves the layer's last input unchanged (``dA x = 0``, or ``g x = x``)."""
    x = layer._last_input
    moved = layer.action.on_input(x)
    return bool((moved == 0).all()) if layer.action.kind == "lie" else bool((moved == x).all())


def mirrored(batch: Batch, key: str = "pos", axis: int = -1) -> dict[str, Tensor]:
    """``batch`` with the point coordinates ``batch[key] [..., 3]`` reflected in the plane ``x_axis = 0``."""
    sign = torch.ones(3, dtype=batch[key].dtype, device=batch[key].device)
    sign[axis] = -1.0
    return {**batch, key: batch[key] * sign}


def assert_separates(
    model: nn.Module,
    task: Any,
    batch: Batch,
    other: Batch,
    *,
    separates: bool = True,
    dtype: torch.dtype = torch.float64,
) -> float:
    """The model's outputs (eval mode) on ``batch`` and ``other`` differ (``separates``) by more than 1000 times
    the dtype's :func:`tolerance`, relative to the outputs' size, for at least one example; or, with
    ``separates=False``, agree within the tolerance for every example. Returns the largest relative gap."""
    model.eval()
    a, b = _outputs(task, model, batch), _outputs(task, model, other)
    scale = torch.maximum(a.norm(dim=1), b.norm(dim=1)).clamp_min(torch.finfo(a.dtype).tiny)
    gap = float(((a - b).norm(dim=1) / scale).max())
    limit = tolerance(dtype)
    if separates:
        assert gap > 1e3 * limit, f"the model does not tell the inputs apart (relative gap {gap:.3g})"
    else:
        assert gap < limit, f"the model tells apart inputs its group identifies (relative gap {gap:.3g})"
    return gap
