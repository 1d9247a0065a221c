"""The relaxed layer ``f(x) = f_eq(x) + theta * W(x)`` and the two functions the trainer calls.

A :class:`RelaxedLayer` wraps an equivariant map ``f_eq: V_in -> V_out`` and a free (unconstrained) map
``W`` of the same input and output shapes, and knows how the group acts on ``V_in`` and ``V_out``. It holds
no schedule: the trainer sets ``theta`` for the whole model with :func:`set_theta` and asks for the
regulariser with :func:`relaxation_penalty`. With ``theta == 0`` the free branch is not evaluated at all,
so the layer returns exactly ``f_eq(x)`` (the *projection* of the paper).

Each relaxed layer also reports its *free-branch share* of the last training batch,
``theta ||W x|| / ||f_eq x||`` (Frobenius norms over the batch, :meth:`RelaxedLayer.free_share`), from tensors
its forward pass computed anyway; the trainer averages it over an epoch's batches (:class:`FreeShareMeter`).

The free branch is initialised from a random stream derived from, but not drawn from, torch's global
generator, so a model built relaxed and the same model built plain from one seed have identical
equivariant weights: ``equivariant`` and ``relaxed`` runs of a seed start from the same network.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from relaxbench.relax.lie import FeatureAction, lie_derivative_sq

__all__ = [
    "FreeShareMeter",
    "RelaxedLayer",
    "build_free",
    "free_parameters",
    "relaxation_penalty",
    "relaxed_layers",
    "set_theta",
    "use_published_layout",
]


def _derived_seed() -> int:
    """A seed that is a deterministic function of the global RNG state, without advancing it."""
    digest = hashlib.sha256(torch.random.get_rng_state().numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def build_free(factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a free branch from ``factory`` without consuming torch's global random stream."""
    seed = _derived_seed()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


class RelaxedLayer(nn.Module):
    """``f(x) = f_eq(x) + theta * W(x)`` on features of representation ``V_in -> V_out``.

    Args:
        equivariant: the constrained map ``f_eq``, ``[B, *feat_in] -> [B, *feat_out]``.
        free: a zero-argument factory returning the free map ``W`` with the same input and output shapes
            (built with a derived random stream, see module docstring).
        action: how the group acts on ``V_in`` and ``V_out`` (for the Lie-derivative penalty).
        free_linear: optional bias-free view ``x -> W_lin x``; by default the linear part of the affine
            ``W`` is taken as ``W(x) - W(0)``, so a bias never leaks into the Lie term.

    Attributes:
        theta: the relaxation weight (float, >= 0), set by :func:`set_theta`.
        gamma: the layer's own trained mixing weight (a scalar parameter), or ``None`` (the default); only dual
            ascent gives layers one (:mod:`relaxbench.relax.dual`). The free branch is weighted by
            :attr:`mix` = ``theta * gamma`` (``theta`` alone without ``gamma``).

    Subclasses whose forward computes ``f_eq(x)`` and ``W(x)`` apart pass both to :meth:`_note_outputs`; a fused
    forward (one map with the summed weight) instead overrides :meth:`activity_norms`.
    """

    def __init__(
        self,
        equivariant: nn.Module,
        free: Callable[[], nn.Module],
        action: FeatureAction,
        free_linear: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.equivariant = equivariant
        self.free = build_free(free)
        self.action = action
        self._free_linear = free_linear
        self.theta = 0.0
        self.register_parameter("gamma", None)
        self.record_input = True
        self._last_input: Tensor | None = None
        self._output_norms: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        y = self.equivariant(x)
        if self.theta == 0.0:
            return y
        self._record(x)
        w_x = self.free(x)
        self._note_outputs(y, w_x)
        return y + self.mix * w_x

    @property
    def mix(self) -> float | Tensor:
        """The free branch's weight: ``theta``, times the layer's trained ``gamma`` where it has one."""
        return self.theta if self.gamma is None else self.theta * self.gamma

    def _record(self, x: Tensor) -> None:
        """Keep the free map's input (detached) for :meth:`penalty_terms` when training with ``record_input``;
        layers that cache statistics of it reset them here. Called only at theta > 0."""
        if self.training and self.record_input:
            self._last_input = x.detach()
            self._output_norms = None

    def _note_outputs(self, equivariant_out: Tensor, free_out: Tensor) -> None:
        """Keep ``(||f_eq x||, ||W x||)`` (Frobenius norms over the batch, detached) of a training forward at
        theta > 0, for :meth:`activity_norms`: two reductions of tensors the forward computed anyway."""
        if self.training and self.record_input:
            norm = torch.linalg.vector_norm
            self._output_norms = (norm(equivariant_out.detach()), norm(free_out.detach()))

    def activity_norms(self) -> tuple[Tensor, Tensor] | None:
        """``(||f_eq x||, ||W x||)`` over the last training batch (``W`` without theta; Frobenius norms over all
        examples and features), or ``None`` when the layer has not run in training at theta > 0 since
        :func:`set_theta`."""
        return self._output_norms

    def free_share(self) -> Tensor | None:
        """``|mix| ||W x|| / ||f_eq x||`` on the last training batch (0-dim tensor, dimensionless; ``mix`` is theta,
        times the layer's gamma under dual ascent): how much of the layer's output the free branch makes; ``None``
        when :meth:`activity_norms` is, NaN when ``f_eq x`` is exactly zero on the batch (a ratio to nothing: e.g.
        the N-body baseline's drift ``w v`` before its first step, ``w = 0``)."""
        norms = self.activity_norms()
        if norms is None:
            return None
        eq, free = norms
        mix = self.mix.detach().abs() if isinstance(self.mix, Tensor) else self.mix
        ratio = mix * free / eq.clamp_min(torch.finfo(eq.dtype).tiny)
        return torch.where(eq > 0, ratio, torch.full_like(ratio, float("nan")))

    def free_linear(self, x: Tensor) -> Tensor:
        """The bias-free free map applied to ``x``."""
        if self._free_linear is not None:
            return self._free_linear(x)
        if hasattr(self.free, "bias") and self.free.bias is None:
            return self.free(x)
        return self.free(x) - self.free(torch.zeros_like(x[:1]))

    def penalty_terms(self, lie: bool = True, norm: bool = True) -> tuple[Tensor, Tensor]:
        """``(ld, norm)``: the squared Lie derivative and the squared free activation on the last input.

        Both are summed over generators and feature axes and averaged over the batch (so their weight does
        not change with the batch size). Zero tensors if the layer saw no input at theta > 0.
        """
        x = self._last_input
        zero = self.free_weight_anchor().new_zeros(())
        if x is None:
            return zero, zero
        ld = lie_derivative_sq(self.free_linear, x, self.action) if lie else zero
        sq = self.free(x).pow(2).sum() / x.shape[0] if norm else zero
        return ld, sq

    def use_published_layout(self) -> None:
        """Switch the Lie penalty to the published code's layout (the ``relaxed_published_lie`` ablation); only
        layers whose penalty stacks Lie-algebra generators as matrices have one."""
        raise ValueError(
            f"{type(self).__name__} has no published-layout Lie penalty (dense Lie-algebra maps only)"
        )

    def free_weight_anchor(self) -> Tensor:
        """Any parameter of the free branch (fixes dtype and device of zero penalties)."""
        return next(self.free.parameters())

    def extra_repr(self) -> str:
        return f"theta={self.theta}, action={self.action.kind}"


def relaxed_layers(model: nn.Module) -> Iterator[RelaxedLayer]:
    """Every :class:`RelaxedLayer` in ``model``'s module tree."""
    return (m for m in model.modules() if isinstance(m, RelaxedLayer))


def set_theta(model: nn.Module, theta: float) -> None:
    """Set ``theta`` on every relaxed layer; ``theta == 0`` projects the model to its equivariant part."""
    if theta < 0:
        raise ValueError(f"theta must be >= 0, got {theta}")
    for layer in relaxed_layers(model):
        layer.theta = float(theta)
        layer._last_input = None
        layer._output_norms = None


def relaxation_penalty(
    model: nn.Module, lie: bool = True, norm: bool = True, eps: float = 1e-8
) -> dict[str, Tensor]:
    """The paper's regulariser over all relaxed layers, from the inputs of the last forward pass.

    Returns ``{"lie": sum_layers sqrt(ld + eps), "norm": sum_layers sqrt(norm + eps)}`` (scalars). A term that is
    switched off, or a model without relaxed layers (or at theta = 0), gives zeros. The ``eps`` keeps the
    gradient finite where a free map is exactly zero.
    """
    lie_total: Tensor | float = 0.0
    norm_total: Tensor | float = 0.0
    for layer in relaxed_layers(model):
        if layer._last_input is None:
            continue
        ld, sq = layer.penalty_terms(lie=lie, norm=norm)
        if lie:
            lie_total = lie_total + torch.sqrt(ld + eps)
        if norm:
            norm_total = norm_total + torch.sqrt(sq + eps)
    as_tensor = lambda v: v if isinstance(v, Tensor) else torch.tensor(float(v))  # noqa: E731
    return {"lie": as_tensor(lie_total), "norm": as_tensor(norm_total)}


def use_published_layout(model: nn.Module) -> None:
    """Give every relaxed layer of ``model`` the published code's Lie-penalty layout
    (:meth:`RelaxedLayer.use_published_layout`)."""
    for layer in relaxed_layers(model):
        layer.use_published_layout()


def free_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of all free branches (for the residual-pathway prior's L2 and for parameter counts)."""
    return [p for layer in relaxed_layers(model) for p in layer.free.parameters()]


class FreeShareMeter:
    """The mean over an epoch's training batches of every relaxed layer's free-branch share.

    Call :meth:`update` once per step, after the forward pass and the penalty, before the optimiser changes
    the weights; :meth:`means` at the end of the epoch. The shares stay tensors until then (one host
    synchronisation per epoch). A layer that did not run at theta > 0 adds 0 for that step; a step whose share
    is undefined (NaN: the equivariant path output exactly zero) is left out of that layer's mean.

    Args:
        model: the model; its relaxed layers are found once, by their qualified module names.
    """

    PREFIX = "share:"

    def __init__(self, model: nn.Module) -> None:
        self.layers = [(name, m) for name, m in model.named_modules() if isinstance(m, RelaxedLayer)]
        self.sums: dict[str, Tensor | float] = {name: 0.0 for name, _ in self.layers}
        self.counts: dict[str, Tensor | int] = {name: 0 for name, _ in self.layers}

    @torch.no_grad()
    def update(self) -> None:
        for name, layer in self.layers:
            share = layer.free_share()
            if share is None:
                self.counts[name] = self.counts[name] + 1
                continue
            defined = ~share.isnan()
            self.sums[name] = self.sums[name] + torch.where(defined, share, torch.zeros_like(share))
            self.counts[name] = self.counts[name] + defined.to(torch.int64)

    def means(self) -> dict[str, float]:
        """``{"share:<layer>": mean share}`` (the history's columns; layer = qualified module name, e.g.
        ``share:layers.0.update``), NaN for a layer whose every step was undefined; empty for a model without
        relaxed layers."""
        out = {}
        for name, total in self.sums.items():
            count = int(self.counts[name])
            out[f"{self.PREFIX}{name}"] = float(total) / count if count else float("nan")
        return out
