"""The so(3) generators every family's Lie-derivative penalty uses, derived in one place.

A generator ``L_a`` (``a = x, y, z``) is the derivative at ``t = 0`` of the rotation by ``t`` about axis ``a``
acting on a feature vector; stacked generators have shape ``[3, d, d]``. All are float64.

- :func:`cartesian_generators`: on a Cartesian 3-vector, ``L_a v = e_a x v`` (exact integers).
- :func:`stacked_vector_generators`: on ``C`` Cartesian vectors flattened channel-major (index ``3 c + i``),
  ``kron(I_C, L_a)`` (Vector Neurons).
- :func:`irreps_generators`: on an e3nn irreps vector, block diagonal in e3nn's real basis (e3nn's own
  ``so3_generators``, computed by e3nn in float32, so its ``l = 1`` block differs from
  :func:`cartesian_generators` by up to 6e-8). Parity plays no role: rotations act on ``l`` alone.
- :func:`parity_matrix`: O(3)'s inversion ``-I`` on an e3nn irreps vector, ``diag(p)`` (a finite element, not a
  generator of so(3): the e3nn family adds it to its penalty, :func:`relaxbench.families.irreps.penalty_generators`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cartesian_generators", "irreps_generators", "parity_matrix", "stacked_vector_generators"]


def cartesian_generators(dtype: torch.dtype = torch.float64) -> Tensor:
    """``[3, 3, 3]``: ``(L_a)_{bc} = -eps_{abc}``, i.e. ``L_a v = e_a x v`` (infinitesimal rotations about x, y, z)."""
    eps = torch.zeros(3, 3, 3, dtype=dtype)
    for a, b, c in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
        eps[a, b, c], eps[a, c, b] = 1.0, -1.0
    return -eps


def stacked_vector_generators(channels: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``[3, 3C, 3C]``: ``kron(I_C, L_a)`` on ``C`` channel-major flattened Cartesian vectors."""
    eye = torch.eye(channels, dtype=dtype)
    return torch.stack([torch.kron(eye, gen) for gen in cartesian_generators(dtype)])


def irreps_generators(irreps, dtype: torch.dtype = torch.float64) -> Tensor:
    """``[3, dim, dim]``: the so(3) generators acting on an irreps vector (block diagonal, e3nn's basis)."""
    from e3nn import o3  # imported here: the Vector Neuron family does not need e3nn

    irreps = o3.Irreps(irreps)
    blocks = [[] for _ in range(3)]
    for mul, ir in irreps:
        gens = o3.so3_generators(ir.l).to(dtype)  # [3, 2l+1, 2l+1]
        for a in range(3):
            blocks[a] += [gens[a]] * mul
    return torch.stack([torch.block_diag(*b) for b in blocks])


def parity_matrix(irreps, dtype: torch.dtype = torch.float64) -> Tensor:
    """``[dim, dim]``: the inversion ``-I`` acting on an irreps vector, ``diag(p)`` with each irrep's parity ``p``."""
    from e3nn import o3

    irreps = o3.Irreps(irreps)
    return torch.diag(
        torch.cat([torch.full((ir.dim,), float(ir.p), dtype=dtype) for mul, ir in irreps for _ in range(mul)])
    )
