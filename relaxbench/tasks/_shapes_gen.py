"""Synthetic point clouds: area-uniform samples of twelve parametric surfaces with random proportions.

Each cloud is ``P`` points drawn uniformly with respect to surface area (rejection sampling where the area
element is not constant in the parameters), then jittered (Gaussian, std ``jitter``), centred (mean 0),
scaled so that its farthest point has norm 1, and rotated by a Haar-random SO(3) element. Coordinates are
dimensionless (unit ball). Everything is drawn from one ``numpy.random.Generator``, so a seed fixes the data.

Classes (index = label): sphere, ellipsoid, cube, cuboid, cylinder (closed), cone (closed), torus, capsule,
tetrahedron, octahedron, helix_left, helix_right (tubes around a helix; the left one is the mirror image of
the right one, so the pair differs only by chirality).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = ["CLASSES", "generate_split", "normalise", "sample_class"]

CLASSES = (
    "sphere",
    "ellipsoid",
    "cube",
    "cuboid",
    "cylinder",
    "cone",
    "torus",
    "capsule",
    "tetrahedron",
    "octahedron",
    "helix_left",
    "helix_right",
)

_BOX_FACES = np.array(
    [
        [0, 1, 3],
        [0, 3, 2],
        [4, 6, 7],
        [4, 7, 5],
        [0, 4, 5],
        [0, 5, 1],
        [2, 3, 7],
        [2, 7, 6],
        [0, 2, 6],
        [0, 6, 4],
        [1, 5, 7],
        [1, 7, 3],
    ]
)  # vertices indexed by bits (x, y, z) of the vertex number
_TETRA_VERTICES = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=np.float64)
_TETRA_FACES = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
_OCTA_VERTICES = np.array(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64
)
_OCTA_FACES = np.array([[a, b, c] for a in (0, 1) for b in (2, 3) for c in (4, 5)])


def _uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    """``[n, 1]`` per-cloud parameters (broadcast against ``[n, P]`` samples)."""
    return rng.uniform(lo, hi, size=(n, 1))


def _unit_vectors(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    v = rng.standard_normal((*shape, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _choose(rng: np.random.Generator, weights: np.ndarray, p: int) -> np.ndarray:
    """``[n, p]`` categorical draws, row ``i`` with probabilities proportional to ``weights[i]`` (``[n, K]``)."""
    cdf = np.cumsum(weights, axis=1)
    u = rng.random((weights.shape[0], p)) * cdf[:, -1:]
    return (u[:, :, None] >= cdf[:, None, :]).sum(-1).clip(max=weights.shape[1] - 1)


def _rejection(
    rng: np.random.Generator,
    n: int,
    p: int,
    propose: Callable[[np.ndarray], np.ndarray],
    accept: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """``[n, p, ...]`` samples by rejection, vectorised over all pending samples (loops over rounds only).

    ``propose(clouds)`` draws one candidate per pending sample (``clouds`` is each sample's cloud index) and
    ``accept(candidates, clouds)`` gives acceptance probabilities in ``[0, 1]``.
    """
    pending = np.arange(n * p)
    out: np.ndarray | None = None
    while pending.size:
        clouds = pending // p
        cand = propose(clouds)
        if out is None:
            out = np.empty((n * p, *cand.shape[1:]))
        keep = rng.random(pending.size) < accept(cand, clouds)
        out[pending[keep]] = cand[keep]
        pending = pending[~keep]
    return out.reshape(n, p, *out.shape[1:])


def _disk(
    rng: np.random.Generator, radius: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform ``(x, y)`` in disks of radius ``radius`` (``[n, 1]``)."""
    rho = radius * np.sqrt(rng.random(shape))
    phi = rng.uniform(0, 2 * np.pi, shape)
    return rho * np.cos(phi), rho * np.sin(phi)


def _mesh(rng: np.random.Generator, vertices: np.ndarray, faces: np.ndarray, p: int) -> np.ndarray:
    """Area-uniform samples of triangle meshes: ``vertices [n, V, 3]``, shared ``faces [F, 3]`` -> ``[n, p, 3]``."""
    tri = vertices[:, faces]  # [n, F, 3 corners, 3]
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]), axis=-1)
    face = _choose(rng, areas, p)
    corners = np.take_along_axis(tri, face[:, :, None, None], axis=1)  # [n, p, 3, 3]
    s, r = np.sqrt(rng.random((*face.shape, 1))), rng.random((*face.shape, 1))
    return (1 - s) * corners[:, :, 0] + s * (1 - r) * corners[:, :, 1] + s * r * corners[:, :, 2]


def _sphere(rng, n, p):
    return _unit_vectors(rng, (n, p))


def _ellipsoid(rng, n, p):
    axes = np.concatenate([np.ones((n, 1)), _uniform(rng, 0.35, 0.8, n), _uniform(rng, 0.35, 0.8, n)], 1)
    # the map u -> axes * u scales the area element at unit vector u by prod(axes) * |u / axes|
    accept = lambda u, c: np.linalg.norm(u / axes[c], axis=-1) * axes[c].min(-1)  # noqa: E731
    return axes[:, None, :] * _rejection(rng, n, p, lambda c: _unit_vectors(rng, (c.size,)), accept)


def _box(rng, n, p, sides):
    bits = (np.arange(8)[:, None] >> np.array([2, 1, 0])) & 1  # vertex k has coordinates from bits of k
    vertices = (bits[None] - 0.5) * sides[:, None, :]
    return _mesh(rng, vertices, _BOX_FACES, p)


def _cube(rng, n, p):
    return _box(rng, n, p, np.ones((n, 3)))


def _cuboid(rng, n, p):
    return _box(
        rng,
        n,
        p,
        np.concatenate([np.ones((n, 1)), _uniform(rng, 0.3, 0.75, n), _uniform(rng, 0.3, 0.75, n)], 1),
    )


def _cylinder(rng, n, p):
    r, h = _uniform(rng, 0.3, 0.6, n), _uniform(rng, 0.8, 2.0, n)
    part = _choose(rng, np.concatenate([2 * r * h, r**2, r**2], 1), p)  # lateral, top, bottom
    phi = rng.uniform(0, 2 * np.pi, (n, p))
    dx, dy = _disk(rng, r, (n, p))
    lateral = part == 0
    x = np.where(lateral, r * np.cos(phi), dx)
    y = np.where(lateral, r * np.sin(phi), dy)
    z = np.where(lateral, rng.uniform(-0.5, 0.5, (n, p)) * h, np.where(part == 1, 0.5, -0.5) * h)
    return np.stack([x, y, z], -1)


def _cone(rng, n, p):
    r, h = _uniform(rng, 0.3, 0.7, n), _uniform(rng, 0.8, 1.6, n)
    lateral = _choose(rng, np.concatenate([r * np.sqrt(r**2 + h**2), r**2], 1), p) == 0
    t = np.sqrt(rng.random((n, p)))  # distance from the apex as a fraction of the slant height
    phi = rng.uniform(0, 2 * np.pi, (n, p))
    dx, dy = _disk(rng, r, (n, p))
    x = np.where(lateral, r * t * np.cos(phi), dx)
    y = np.where(lateral, r * t * np.sin(phi), dy)
    z = np.where(lateral, h * (1 - t), 0.0)
    return np.stack([x, y, z], -1)


def _torus(rng, n, p):
    big, small = 1.0, _uniform(rng, 0.15, 0.45, n)
    v = _rejection(
        rng,
        n,
        p,
        lambda c: rng.uniform(0, 2 * np.pi, c.size),
        lambda v, c: (big + small[c, 0] * np.cos(v)) / (big + small[c, 0]),
    )
    u = rng.uniform(0, 2 * np.pi, (n, p))
    ring = big + small * np.cos(v)
    return np.stack([ring * np.cos(u), ring * np.sin(u), small * np.sin(v)], -1)


def _capsule(rng, n, p):
    r, h = _uniform(rng, 0.25, 0.5, n), _uniform(rng, 0.5, 1.5, n)
    lateral = _choose(rng, np.concatenate([h, 2 * r], 1), p) == 0  # areas 2 pi r h and 4 pi r^2
    phi = rng.uniform(0, 2 * np.pi, (n, p))
    side = np.stack([r * np.cos(phi), r * np.sin(phi), rng.uniform(-0.5, 0.5, (n, p)) * h], -1)
    ball = r[..., None] * _unit_vectors(rng, (n, p))
    ball[..., 2] += np.sign(ball[..., 2]) * 0.5 * h
    return np.where(lateral[..., None], side, ball)


def _stretched(rng, n, base, lo, hi):
    scale = np.concatenate([np.ones((n, 1)), _uniform(rng, lo, hi, n), _uniform(rng, lo, hi, n)], 1)
    return base[None] * scale[:, None, :]


def _tetrahedron(rng, n, p):
    return _mesh(rng, _stretched(rng, n, _TETRA_VERTICES, 0.6, 1.0), _TETRA_FACES, p)


def _octahedron(rng, n, p):
    return _mesh(rng, _stretched(rng, n, _OCTA_VERTICES, 0.5, 1.0), _OCTA_FACES, p)


def _helix_right(rng, n, p):
    """A tube of radius ``r`` around the right-handed helix ``(cos t, sin t, b t)``, ``t in [0, 2 pi turns]``."""
    b = _uniform(rng, 0.4, 0.8, n) / (2 * np.pi)  # rise per radian
    turns, r = _uniform(rng, 1.5, 3.0, n), _uniform(rng, 0.1, 0.25, n)
    kappa = 1.0 / (1.0 + b**2)  # curvature of a unit-radius helix; kappa * r < 1
    # area element of a tube around a curve: |c'| r (1 - kappa r cos v) dt dv
    v = _rejection(
        rng,
        n,
        p,
        lambda c: rng.uniform(0, 2 * np.pi, c.size),
        lambda v, c: (1 - kappa[c, 0] * r[c, 0] * np.cos(v)) / (1 + kappa[c, 0] * r[c, 0]),
    )
    t = rng.random((n, p)) * 2 * np.pi * turns
    centre = np.stack([np.cos(t), np.sin(t), b * t], -1)
    normal = np.stack([-np.cos(t), -np.sin(t), np.zeros_like(t)], -1)
    tangent = np.stack([-np.sin(t), np.cos(t), b * np.ones_like(t)], -1) / np.sqrt(1 + b**2)[..., None]
    binormal = np.cross(tangent, normal)
    return centre + r[..., None] * (np.cos(v)[..., None] * normal + np.sin(v)[..., None] * binormal)


def _helix_left(rng, n, p):
    return _helix_right(rng, n, p) * np.array([1.0, 1.0, -1.0])  # mirror image: the opposite handedness


_SAMPLERS = {
    "sphere": _sphere,
    "ellipsoid": _ellipsoid,
    "cube": _cube,
    "cuboid": _cuboid,
    "cylinder": _cylinder,
    "cone": _cone,
    "torus": _torus,
    "capsule": _capsule,
    "tetrahedron": _tetrahedron,
    "octahedron": _octahedron,
    "helix_left": _helix_left,
    "helix_right": _helix_right,
}


def sample_class(name: str, n: int, p: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, p, 3]`` raw surface samples of class ``name`` (random proportions, not yet normalised)."""
    return _SAMPLERS[name](rng, n, p)


def normalise(clouds: np.ndarray, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """Jitter (Gaussian, std ``jitter``), centre each cloud, scale its farthest point to norm 1, rotate."""
    clouds = clouds + jitter * rng.standard_normal(clouds.shape)
    clouds = clouds - clouds.mean(axis=1, keepdims=True)
    clouds = clouds / np.linalg.norm(clouds, axis=-1).max(axis=1)[:, None, None]
    rotations = Rotation.random(len(clouds), random_state=rng).as_matrix()  # Haar-uniform SO(3)
    return np.einsum("nij,npj->npi", rotations, clouds)


def generate_split(
    n_per_class: int, p: int, jitter: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(pos [12 n_per_class, p, 3] float64, label [12 n_per_class] int64)``, classes in order."""
    clouds = [sample_class(name, n_per_class, p, rng) for name in CLASSES]
    labels = np.repeat(np.arange(len(CLASSES)), n_per_class)
    return normalise(np.concatenate(clouds), jitter, rng), labels
