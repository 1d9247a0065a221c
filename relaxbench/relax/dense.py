"""A relaxed layer whose free branch is one dense matrix on the last feature axis.

This is the free branch of SEGNN / e3nn models (a ``Linear(dim_in -> dim_out)`` on the flattened irreps
vector) and of Vector Neurons (a ``Linear(3*C_in -> 3*C_out)`` on each point's flattened (channel, xyz)
vector). Two things make it cheaper than the generic :class:`~relaxbench.relax.relaxed.RelaxedLayer`:

- **Fused forward.** When the equivariant map is itself linear on the same input (``equivariant_matrix``
  gives its dense ``[d_in, d_out]`` matrix), ``f_eq(x) + theta W x`` is computed as one matmul with the summed
  weight. At ``theta = 0`` the equivariant module runs alone, so the projected model is bit-for-bit its plain
  twin.
- **Penalties from the second moment.** For a linear ``W`` and generator matrices ``G_in``, ``G_out`` the Lie
  derivative is the matrix ``L_A = W G_in_A - G_out_A W``, and

      sum_x ||L_A x||^2 = tr(L_A S L_A^T),   S = sum_x x x^T        (d_in x d_in)

  so the data enter only through ``S`` (and ``m = sum_x x`` for the bias in the norm term): the penalty costs
  one ``[(G + 1) d_out, d_in] x [d_in, d_in]`` matmul after one ``O(n d^2)`` pass over the inputs, independent of
  how many points ``x`` covers; ``W A`` and ``B W`` use the generators as sparse matrices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from relaxbench.relax.lie import make_lie_action
from relaxbench.relax.relaxed import RelaxedLayer

__all__ = ["DenseRelaxedLinear", "second_moment_penalty"]


def second_moment_penalty(
    lie_rows: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    moments: tuple[Tensor, Tensor, int],
    batch: int,
) -> tuple[Tensor, Tensor]:
    """Both penalty terms of a dense free map ``x -> W x + b`` from its input's moments, per example.

    Args:
        lie_rows: ``[G d_out, d_in]`` the Lie derivatives ``L_A = W A - B W`` stacked by rows (``None``: no
            Lie term).
        weight: ``W [d_out, d_in]`` (``None``: no norm term); ``bias``: ``b [d_out]`` or ``None``.
        moments: ``(S [d_in, d_in], m [d_in], n)``: ``sum_x x x^T``, ``sum_x x`` and the number of vectors.
        batch: examples the sums run over (both terms are divided by it).

    Returns:
        ``(ld, sq)``: ``sum_A tr(L_A S L_A^T) / batch`` and ``(tr(W S W^T) + 2 b.W m + n |b|^2) / batch``
        (zero for an absent term). Both quadratic forms share one ``[rows, d_in] @ S`` product, and their
        gradient ``2 M S`` reuses it (first order: the result is not twice differentiable).
    """
    s, m, n = moments
    rows = [r for r in (lie_rows, weight) if r is not None]
    zero = s.new_zeros(())
    if not rows:
        return zero, zero
    mats = torch.cat(rows)
    ms = mats.detach() @ s

    def quadratic_form(r: slice) -> Tensor:
        q = torch.dot(ms[r].flatten(), mats[r].flatten())
        return 2 * q - q.detach()

    n_lie = 0 if lie_rows is None else lie_rows.shape[0]
    ld = quadratic_form(slice(0, n_lie)) / batch if lie_rows is not None else zero
    sq = zero
    if weight is not None:
        sq = quadratic_form(slice(n_lie, None))
        if bias is not None:
            sq = sq + 2 * bias @ (weight @ m) + n * bias.pow(2).sum()
        sq = sq / batch
    return ld, sq


class DenseRelaxedLinear(RelaxedLayer):
    """``f(x) = f_eq(x) + theta * (x W^T + b)`` on features ``[*lead, d_in] -> [*lead, d_out]``.

    Args:
        equivariant: the equivariant map on the last axis (e.g. ``e3nn.o3.Linear``).
        d_in, d_out: feature sizes of the last axis.
        gen_in: ``[G, d_in, d_in]`` Lie-algebra generators acting on the input features.
        gen_out: ``[G, d_out, d_out]`` the same generators on the output features.
        init_std: standard deviation of the free weight at initialisation (0 gives a zero free map).
        bias: whether the free map has a bias (kept out of the Lie term).
        equivariant_matrix: optional zero-argument callable returning ``f_eq``'s dense ``[d_in, d_out]``
            matrix, enabling the fused forward (only valid if ``f_eq`` is linear without bias).

    The penalty statistics are per example of the leading axis: ``S`` is divided by ``x.shape[0]``.
    """

    def __init__(
        self,
        equivariant: nn.Module,
        d_in: int,
        d_out: int,
        gen_in: Tensor,
        gen_out: Tensor,
        init_std: float = 1e-4,
        bias: bool = False,
        equivariant_matrix: Callable[[], Tensor] | None = None,
    ) -> None:
        def free() -> nn.Linear:
            lin = nn.Linear(d_in, d_out, bias=bias)
            nn.init.normal_(lin.weight, 0.0, init_std) if init_std > 0 else nn.init.zeros_(lin.weight)
            if bias:
                nn.init.zeros_(lin.bias)
            return lin

        super().__init__(equivariant, free, make_lie_action(gen_in, gen_out))
        self.register_buffer("gen_in", gen_in.clone(), persistent=False)
        self.register_buffer("gen_out", gen_out.clone(), persistent=False)
        self._equivariant_matrix = equivariant_matrix
        self._moments: tuple[Tensor, Tensor, int] | None = None
        self._sparse_generators: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def forward(self, x: Tensor, *condition: Tensor) -> Tensor:
        """``x [*lead, d_in] -> [*lead, d_out]``; ``condition`` (e.g. node attributes for a conditioned tensor
        product) goes to the equivariant map only, and rules out the fused forward."""
        if self.theta == 0.0:
            return self.equivariant(x, *condition)
        self._record(x)
        if self._equivariant_matrix is None or condition:
            return torch.add(self.equivariant(x, *condition), self.free(x), alpha=self.theta)
        weight = self._equivariant_matrix() + self.theta * self.free.weight.t()
        y = x @ weight
        return y if self.free.bias is None else y + self.theta * self.free.bias

    def _record(self, x: Tensor) -> None:
        super()._record(x)
        self._moments = None

    def moments(self) -> tuple[Tensor, Tensor, int]:
        """``(S [d_in, d_in], m [d_in], n)`` of the last input: second moment, sum, number of vectors."""
        if self._moments is None:
            x = self._last_input.reshape(-1, self._last_input.shape[-1])
            self._moments = (x.t() @ x, x.sum(0), x.shape[0])
        return self._moments

    def sparse_generators(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(A^T stacked [G d_in, d_in], B stacked [G d_out, d_out])`` as sparse matrices of ``like``'s dtype and
        device (cached). Generators are sparse (block diagonal for irreps), so ``W A`` and ``B W`` cost
        ``O(nnz d)`` instead of ``O(d^3)``."""
        key = (like.dtype, like.device)
        if key not in self._sparse_generators:
            gin, gout = self.gen_in.to(like), self.gen_out.to(like)
            self._sparse_generators[key] = (
                gin.transpose(1, 2).reshape(-1, gin.shape[-1]).to_sparse(),
                gout.reshape(-1, gout.shape[-1]).to_sparse(),
            )
        return self._sparse_generators[key]

    def penalty_terms(self, lie: bool = True, norm: bool = True) -> tuple[Tensor, Tensor]:
        weight = self.free.weight  # [d_out, d_in]
        d_out, d_in = weight.shape
        zero = weight.new_zeros(())
        if self._last_input is None or not (lie or norm):
            return zero, zero
        lie_rows = None
        if lie:
            gin_t, gout = self.sparse_generators(weight)
            g = self.gen_in.shape[0]
            w_a = torch.sparse.mm(gin_t, weight.t()).view(g, d_in, d_out).transpose(1, 2)  # W A
            b_w = torch.sparse.mm(gout, weight).view(g, d_out, d_in)  # B W
            lie_rows = (w_a - b_w).reshape(g * d_out, d_in)
        return second_moment_penalty(
            lie_rows, weight if norm else None, self.free.bias, self.moments(), self._last_input.shape[0]
        )
