"""An SE(3)-equivariant graph-attention transformer from e3nn pieces (SE(3)-Transformer / Equiformer style).

Input: a batch of point sets ``pos [B, N, 3]`` (one radius graph per example, built with ``torch.cdist``),
with atom types ``z [B, N]`` (embedded; when the spec names ``max_atomic_number``) or without types.
Node features are irreps vectors of ``hidden`` (default by task kind, see :data:`DEFAULTS`). Each block:

1. **Attention** (pre-norm, residual). Edge features: spherical harmonics ``Y(r_ij)`` up to ``l_max`` and a
   smooth radial basis of ``|r_ij|``. A depthwise tensor product ``TP(x_j, Y(r_ij); R(|r_ij|))`` (Equiformer's
   ``uvu`` paths, per-edge weights from a radial MLP) gives the values; keys are ``o3.Linear`` of the values
   and queries ``o3.Linear(x_i)`` (``keys`` irreps). The logits are per-head inner products
   ``<q_i, k_ij> / sqrt(d_head)`` (each head owns whole irreps, so they are invariant); the attention weights
   are a softmax over neighbours multiplied by a smooth cutoff envelope (so energies stay smooth as atoms
   cross ``max_radius``); the head-weighted sum of the values over neighbours is projected back to ``hidden``
   by ``o3.Linear``.
2. **Feed-forward** (pre-norm, residual): ``o3.Linear -> Gate -> o3.Linear``. In the relaxed model this
   map is relaxed with a free MLP (:func:`relaxbench.families.irreps.relax`, ``free="mlp"``; the published Equiformer variant): a free
   MLP of ``[normed features, node attribute, raw centred position]`` is added as ``theta * W(...)``, its last
   layer scaled by 0.01 at init, penalised by its Lie derivative (``lie_mode="lie"``, default: the exact
   ``d/dt [W(exp(tA) x) - exp(tA) W(x)]`` by ``torch.func.jvp`` for the three so(3) generators acting on the
   features and on the position) or by the published finite-rotation difference (``lie_mode="finite"``,
   5 degrees about each axis); both add the inversion's finite difference (the features' parities, ``-pos``),
   since every block is O(3)-equivariant.

Norms are equivariant layer norms (scalars: mean and variance over channels; ``l > 0``: RMS over channels).
Readout by ``spec["kind"]``:

- ``"molecule"``: per-atom energies from the even scalars (an MLP), summed: energy ``[B]`` (dimensionless;
  the task scales it and derives forces). Invariant under rotations, reflections, translations, permutations.
- ``"point_classification"``: logits ``[B, num_classes]`` from all scalars (``0e`` and ``0o``), averaged over
  points: SO(3)-invariant and, with odd irreps in ``hidden`` and three or more blocks, able to tell mirror
  images apart.
- ``"nbody"``: inputs ``loc, vel [B, N, 3]``, ``charges [B, N, 1]`` (node input ``1x0e + 1x1o``); output
  positions ``loc + o3.Linear(h) [B, N, 3]`` (``1x1o``).

Everything is SE(3)-equivariant (e3nn 0.6's ``1o`` basis is Cartesian ``x, y, z``).
"""

from __future__ import annotations

import torch
from e3nn import o3
from e3nn.math import soft_unit_step
from e3nn.nn import FullyConnectedNet
from torch import Tensor, nn

from relaxbench.families import irreps

__all__ = ["DEFAULTS", "FAMILY", "TASK_KINDS", "EquivariantLayerNorm", "SE3Transformer", "build"]

FAMILY = "se3_transformer"
#: task kinds this model supports -> the group it respects on them
TASK_KINDS = {
    "molecule": "E(3) x permutations",
    "nbody": "E(3) x permutations",
    "point_classification": "SO(3) x permutations",
}

#: Default node irreps and depth per task kind. Molecular energies and N-body positions are O(3)-equivariant,
#: so even scalars, vectors and l = 2 suffice; telling mirror images apart (tetris' chiral pair) needs odd
#: scalars ``0o``, which the tensor products first produce in the third block (``1e x 1o -> 0o``).
DEFAULTS = {
    "molecule": ("16x0e + 8x1o + 4x2e", 2),
    "nbody": ("16x0e + 8x1o + 4x2e", 2),
    "point_classification": ("16x0e + 4x0o + 8x1o + 4x1e + 4x2e", 3),
}


class EquivariantLayerNorm(nn.Module):
    """Layer norm on an irreps vector ``[..., irreps.dim] -> [..., irreps.dim]`` (same irreps in and out).

    For each ``mul x ir`` of ``irreps``: scalars ``l = 0`` are centred and divided by their standard deviation
    over the ``mul`` channels (learned scale; learned bias for ``0e`` only, a bias on ``0o`` would break
    parity); ``l > 0`` fields are divided by the root mean square of their norms over the channels (learned
    scale, no bias).
    """

    def __init__(self, irreps, eps: float = 1e-5) -> None:
        super().__init__()
        self.irreps = o3.Irreps(irreps)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(self.irreps.num_irreps))
        n_bias = sum(mul for mul, ir in self.irreps if ir == o3.Irrep("0e"))
        self.bias = nn.Parameter(torch.zeros(n_bias))

    def forward(self, x: Tensor) -> Tensor:
        out, w_at, b_at = [], 0, 0
        for (mul, ir), sl in zip(self.irreps, self.irreps.slices()):
            field = x[..., sl].reshape(*x.shape[:-1], mul, ir.dim)
            if ir.l == 0:
                field = field - field.mean(dim=-2, keepdim=True)
            scale = field.pow(2).mean(dim=(-2, -1), keepdim=True)
            field = field * torch.rsqrt(scale + self.eps) * self.weight[w_at : w_at + mul, None]
            if ir == o3.Irrep("0e"):
                field = field + self.bias[b_at : b_at + mul, None]
                b_at += mul
            w_at += mul
            out.append(field.reshape(*x.shape[:-1], mul * ir.dim))
        return torch.cat(out, dim=-1)


def _head_matrix(irreps: o3.Irreps, heads: int) -> Tensor:
    """``[irreps.dim, heads]`` one-hot: which head each component belongs to (each head owns whole irreps)."""
    owner = []
    for mul, ir in irreps:
        if mul % heads:
            raise ValueError(
                f"every multiplicity must be divisible by heads={heads}; {irreps} has {mul}x{ir}"
            )
        owner += [c * heads // mul for c in range(mul) for _ in range(ir.dim)]
    return nn.functional.one_hot(torch.tensor(owner), heads).to(torch.get_default_dtype())


class _FeedForward(nn.Sequential):
    """``o3.Linear -> Gate -> o3.Linear`` on ``irreps -> irreps`` (SiLU on ``0e``, tanh on ``0o``, sigmoid gates).

    ``forward(y, context=None)`` ignores ``context``, which only the relaxed layer's free MLP reads, so the plain
    and the relaxed block call it alike.
    """

    def __init__(self, irreps_hidden: o3.Irreps) -> None:
        gate = irreps.gate(irreps_hidden)
        super().__init__(
            o3.Linear(irreps_hidden, gate.irreps_in), gate, o3.Linear(gate.irreps_out, irreps_hidden)
        )
        self.irreps_in = self.irreps_out = o3.Irreps(irreps_hidden)

    def forward(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        for module in self:
            y = module(y)
        return y


class _Edges:
    """Geometry of the dense per-example radius graph (``[B, N(i), N(j), ...]``, ``r_ij = x_j - x_i``).

    Attributes:
        sh: ``[B, N, N, irreps_sh.dim]`` spherical harmonics of ``r_ij`` (component normalisation).
        radial: ``[B, N, N, n_radial]`` smooth radial basis of ``|r_ij|`` (vanishes at ``max_radius``).
        weight: ``[B, N, N, 1]`` smooth cutoff envelope on the graph's edges, 0 on self-pairs and non-edges.
    """

    def __init__(self, pos: Tensor, irreps_sh: o3.Irreps, max_radius: float, n_radial: int) -> None:
        n = pos.shape[1]
        self_pair = torch.eye(n, dtype=torch.bool, device=pos.device)
        with torch.no_grad():
            graph = (torch.cdist(pos, pos) < max_radius) & ~self_pair
        rel = pos.unsqueeze(1) - pos.unsqueeze(2)
        # Self-pairs get a dummy unit vector (masked out below) so that norms and their gradients stay finite.
        dummy = torch.zeros(3, dtype=pos.dtype, device=pos.device)
        dummy[0] = 1.0
        rel = torch.where(self_pair[..., None], dummy, rel)
        self.sh, dist, self.radial = irreps.edge_features(rel, irreps_sh, max_radius, n_radial)
        self.weight = (soft_unit_step(10.0 * (1.0 - dist / max_radius)) * graph).unsqueeze(-1)


def _attention(logits: Tensor, weight: Tensor) -> Tensor:
    """Softmax over neighbours ``j`` (axis 2) of ``logits [B, N, N, H]``, multiplied by ``weight [B, N, N, 1]``.

    Rows without neighbours get all-zero weights.
    """
    valid = weight > 0
    top = logits.masked_fill(~valid, float("-inf")).amax(dim=2, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(torch.where(valid, logits, top) - top) * weight
    return e / e.sum(dim=2, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)


def _depthwise_tp(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, keep: o3.Irreps) -> o3.TensorProduct:
    """Depthwise (``uvu``) tensor product ``irreps_in x irreps_sh -> out`` with per-edge weights.

    Every channel of ``irreps_in`` is multiplied with every spherical harmonic; outputs whose irrep type is not
    in ``keep`` are dropped. The output irreps (``tp.irreps_out``) keep each input multiplicity.
    """
    out, instructions = [], []
    for i_in, (mul, ir_in) in enumerate(irreps_in):
        for i_sh, (_, ir_sh) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_sh:
                if ir_out in keep:
                    instructions.append((i_in, i_sh, len(out), "uvu", True))
                    out.append((mul, ir_out))
    return o3.TensorProduct(
        irreps_in, irreps_sh, o3.Irreps(out), instructions, shared_weights=False, internal_weights=False
    )


class _Block(nn.Module):
    """One transformer block on node features ``[B, N, irreps_hidden.dim] -> same``."""

    def __init__(
        self,
        irreps_hidden: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_key: o3.Irreps,
        heads: int,
        n_radial: int,
        radial_hidden: int,
        irreps_context: o3.Irreps,
        relaxed: bool,
        free_hidden: int,
        lie_mode: str,
    ) -> None:
        super().__init__()
        h, k = irreps_hidden, irreps_key
        self.norm_attention = EquivariantLayerNorm(h)
        self.query = o3.Linear(h, k)
        self.tp = _depthwise_tp(h, irreps_sh, o3.Irreps([ir for _, ir in h]))
        self.radial = FullyConnectedNet([n_radial, radial_hidden, self.tp.weight_numel], nn.functional.silu)
        self.key = o3.Linear(self.tp.irreps_out, k)
        self.project = o3.Linear(self.tp.irreps_out, h)
        self.register_buffer(
            "value_heads", _head_matrix(self.tp.irreps_out, heads).t().contiguous(), persistent=False
        )
        self.register_buffer("key_heads", _head_matrix(k, heads), persistent=False)
        self.key_scale = (k.dim / heads) ** -0.5
        self.norm_ff = EquivariantLayerNorm(h)
        self.ff = irreps.relax(
            _FeedForward(h),
            relaxed,
            free="mlp",
            context=irreps_context,
            hidden=free_hidden,
            lie_mode=lie_mode,
        )

    def forward(self, h: Tensor, edges: _Edges, context: Tensor | None) -> Tensor:
        x = self.norm_attention(h)
        b, n, d = x.shape
        values = self.tp(x.unsqueeze(1).expand(b, n, n, d), edges.sh, self.radial(edges.radial))
        logits = (self.query(x).unsqueeze(2) * self.key(values)) @ self.key_heads * self.key_scale
        alpha = _attention(logits, edges.weight) @ self.value_heads  # [B, N, N, d_values]
        h = h + self.project((alpha * values).sum(dim=2))
        y = self.norm_ff(h)
        return h + self.ff(y, context)


class SE3Transformer(nn.Module):
    """See the module docstring. ``forward(batch) -> [B]`` energy, ``[B, C]`` logits or ``[B, N, 3]`` positions."""

    def __init__(
        self,
        kind: str,
        hidden: str,
        keys: str,
        l_max: int,
        layers: int,
        heads: int,
        max_radius: float,
        n_radial: int,
        radial_hidden: int,
        num_types: int,
        attr_dim: int,
        num_classes: int,
        relaxed: bool,
        free_hidden: int,
        lie_mode: str,
    ) -> None:
        super().__init__()
        irreps_hidden = o3.Irreps(hidden)
        self.kind, self.max_radius, self.n_radial = kind, max_radius, n_radial
        self.irreps_sh = o3.Irreps.spherical_harmonics(l_max)
        self.embed = nn.Embedding(num_types, attr_dim) if num_types else None
        irreps_attr = o3.Irreps(f"{attr_dim if num_types else 1}x0e")
        irreps_input = irreps_attr + o3.Irreps("1x1o") if kind == "nbody" else irreps_attr
        self.embed_input = o3.Linear(irreps_input, irreps_hidden)
        irreps_context = irreps_attr + o3.Irreps("1x1o")  # node attribute and raw centred position
        self.relaxed = relaxed
        self.blocks = nn.ModuleList(
            _Block(
                irreps_hidden,
                self.irreps_sh,
                o3.Irreps(keys),
                heads,
                n_radial,
                radial_hidden,
                irreps_context,
                relaxed,
                free_hidden,
                lie_mode,
            )
            for _ in range(layers)
        )
        self.norm_out = EquivariantLayerNorm(irreps_hidden)
        # Invariant readout features: even scalars for energies (O(3)-invariant), all scalars for classes.
        parities = (1,) if kind == "molecule" else (1, -1)
        index = [
            i
            for (_, ir), sl in zip(irreps_hidden, irreps_hidden.slices())
            if ir.l == 0 and ir.p in parities
            for i in range(sl.start, sl.stop)
        ]
        self.register_buffer("readout_index", torch.tensor(index, dtype=torch.long), persistent=False)
        if kind == "molecule":
            self.readout = nn.Sequential(
                nn.Linear(len(index), len(index)), nn.SiLU(), nn.Linear(len(index), 1)
            )
        elif kind == "point_classification":
            self.readout = nn.Linear(len(index), num_classes)
        else:
            self.readout = o3.Linear(irreps_hidden, "1x1o")

    def _inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``(pos [B, N, 3], attr [B, N, d_attr], node input [B, N, d_in])`` for the task kind."""
        pos = batch["loc"] if self.kind == "nbody" else batch["pos"]
        if self.kind == "nbody":
            attr = batch["charges"].to(pos.dtype)
            return pos, attr, torch.cat([attr, batch["vel"]], dim=-1)
        attr = self.embed(batch["z"]) if self.embed is not None else pos.new_ones(*pos.shape[:2], 1)
        return pos, attr, attr

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        pos, attr, node_input = self._inputs(batch)
        edges = _Edges(pos, self.irreps_sh, self.max_radius, self.n_radial)
        context = torch.cat([attr, pos - pos.mean(dim=1, keepdim=True)], dim=-1) if self.relaxed else None
        h = self.embed_input(node_input)
        for block in self.blocks:
            h = block(h, edges, context)
        h = self.norm_out(h)
        if self.kind == "nbody":
            return pos + self.readout(h)
        scalars = h.index_select(-1, self.readout_index)
        if self.kind == "molecule":
            return self.readout(scalars).squeeze(-1).sum(dim=1)
        return self.readout(scalars).mean(dim=1)


def build(
    spec: dict,
    relaxed: bool = False,
    hidden: str | None = None,
    keys: str = "8x0e + 4x1o",
    l_max: int = 2,
    layers: int | None = None,
    heads: int = 2,
    max_radius: float = 5.0,
    n_radial: int = 8,
    radial_hidden: int = 16,
    attr_dim: int = 8,
    free_hidden: int = 32,
    lie_mode: str = "lie",
) -> SE3Transformer:
    """An SE(3)-transformer for a task spec (``kind``; ``max_atomic_number`` for typed atoms,
    ``num_classes`` for classification).

    Args:
        hidden: irreps of the node features (every multiplicity divisible by ``heads``); default by kind
            (:data:`DEFAULTS`).
        keys: irreps of queries and keys (multiplicities divisible by ``heads``).
        l_max: largest degree of the edge spherical harmonics.
        layers, heads: transformer blocks (default by kind) and attention heads.
        max_radius: radius of the graph and of the smooth cutoff (the positions' unit, Angstrom for molecules).
        n_radial, radial_hidden: radial basis size and the radial MLP's width.
        attr_dim: size of the atom-type embedding (the node attribute).
        free_hidden: width of the relaxed model's free MLPs.
        lie_mode: ``"lie"`` (exact Lie derivative by jvp, default) or ``"finite"`` (published 5-degree
            finite rotations) for the free MLPs' equivariance penalty.

    The defaults are CPU-scale (about 9k parameters). Paper-like (Equiformer on MD17) sizes:
    ``hidden="128x0e + 64x1o + 32x2e"``, ``keys="32x0e + 16x1o"``, ``layers=6``, ``heads=4``, ``max_radius=5.0``.
    """
    kind = spec["kind"]
    if kind not in DEFAULTS:
        raise ValueError(f"se3_transformer: unknown task kind {kind!r}; supported: {sorted(DEFAULTS)}")
    default_hidden, default_layers = DEFAULTS[kind]
    num_types = int(spec["max_atomic_number"]) + 1 if "max_atomic_number" in spec else 0
    return SE3Transformer(
        kind,
        hidden or default_hidden,
        keys,
        l_max,
        layers or default_layers,
        heads,
        max_radius,
        n_radial,
        radial_hidden,
        num_types,
        attr_dim,
        int(spec.get("num_classes", 0)),
        relaxed,
        free_hidden,
        lie_mode,
    )
