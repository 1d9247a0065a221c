"""Batched charged N-body simulator that reproduces the reference generator of Kipf et al. (2018).

The charged-particle data of the EGNN / SEGNN / constraint-relaxation papers come from one script
(``generate_dataset.py --simulation=charged --seed 43 --suffix small``) that simulates one trajectory at a time
from one seeded numpy stream (``np.random.seed``, i.e. the legacy Mersenne-Twister ``RandomState``). This module
follows that stream draw for draw and integrates many trajectories at once.

Physics (dimensionless units; unit masses):

- ``n = 5`` particles, charges ``q = +1`` or ``-1`` with probability 1/2 each;
- initial positions ``randn * 1.0``; initial velocities ``randn`` rescaled so that every particle's speed is 0.5;
  positions reflected into the box ``[-5, 5]^3`` once, at the start only;
- force on ``i``: ``sum_j q_i q_j (x_i - x_j) / |x_i - x_j|^3``, each component clipped to ``[-100, 100]``;
- leapfrog-style updates with ``dt = 0.001``: an initial ``v += dt F``, then per step ``x += dt v``,
  ``v += dt F(x)``; trajectories of 5,000 steps saved every 100 steps, so frame ``k`` (0..48) is the state
  after step ``100 (k + 1)``.

Random-draw order per trajectory (what must be consumed to stay in step with the reference stream):
5 uniforms for the charges (``choice`` with ``p = [1/2, 0, 1/2]`` over ``[-1, 0, 1]``), ``3 x 5`` normals for
the positions, ``3 x 5`` for the velocities, then two noise arrays of ``49 x 3 x 5`` normals each (drawn even
though the noise variance is 0). All training trajectories are drawn first, then validation, then test.

Arrays use the reference layout: positions and velocities ``[n_traj, 3, n_particles]`` per frame (xyz before
particle), charges ``[n_traj, n_particles, 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

__all__ = [
    "BOX_SIZE",
    "DT",
    "MAX_FORCE",
    "N_FRAMES",
    "N_PARTICLES",
    "SAMPLE_FREQ",
    "draw_initial_states",
    "forces",
    "integrate",
]

N_PARTICLES = 5
BOX_SIZE = 5.0
LOC_STD = 1.0
VEL_NORM = 0.5
DT = 0.001
MAX_FORCE = 0.1 / DT
SAMPLE_FREQ = 100
N_STEPS = 5000
N_FRAMES = N_STEPS // SAMPLE_FREQ - 1  # 49 saved frames
CHUNK = 1024  # trajectories integrated together


def _reflect_into_box(loc: np.ndarray, vel: np.ndarray) -> None:
    """Reflect positions outside ``[-BOX_SIZE, BOX_SIZE]`` back inside (in place), turning the velocity inward."""
    over = loc > BOX_SIZE
    loc[over] = 2 * BOX_SIZE - loc[over]
    vel[over] = -np.abs(vel[over])
    under = loc < -BOX_SIZE
    loc[under] = -2 * BOX_SIZE - loc[under]
    vel[under] = np.abs(vel[under])


def draw_initial_states(rng: np.random.RandomState, n_traj: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n_traj`` initial states from ``rng`` exactly as the reference does, consuming the same numbers.

    Returns:
        ``loc0 [n_traj, 3, N]`` and ``vel0 [n_traj, 3, N]`` (after the box reflection; velocity not yet
        half-stepped), ``charges [n_traj, N, 1]`` (float64, +-1).
    """
    n = N_PARTICLES
    per_traj = 2 * 3 * n + 2 * N_FRAMES * 3 * n  # positions, velocities, two (unused) noise arrays
    loc0 = np.empty((n_traj, 3, n))
    vel0 = np.empty((n_traj, 3, n))
    charges = np.empty((n_traj, n, 1))
    for t in range(n_traj):
        # ``choice([-1, 0, 1], p=[1/2, 0, 1/2])`` draws one uniform u per particle and returns -1 for u < 1/2,
        # else +1 (inverse CDF, searchsorted to the right); drawing the uniforms directly is the same stream.
        charges[t, :, 0] = np.where(rng.random_sample(n) < 0.5, -1.0, 1.0)
        normals = rng.standard_normal(per_traj)
        loc0[t] = normals[: 3 * n].reshape(3, n) * LOC_STD
        vel0[t] = normals[3 * n : 6 * n].reshape(3, n)
    speed = np.sqrt((vel0**2).sum(axis=1)).reshape(n_traj, 1, n)
    vel0 = vel0 * VEL_NORM / speed
    _reflect_into_box(loc0, vel0)
    return loc0, vel0, charges


@cache
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray, tuple[tuple[tuple[int, bool], ...], ...]]:
    """The pairs ``i < j`` (``first``, ``second``) and, per particle ``i``, its pairs in the order of ``j != i``
    as ``(pair index, flipped)`` with ``flipped`` when ``j < i`` (the term enters with a minus sign)."""
    first, second = np.triu_indices(n, 1)
    index = {(i, j): p for p, (i, j) in enumerate(zip(first.tolist(), second.tolist()))}
    order = tuple(tuple((index[min(i, j), max(i, j)], j < i) for j in range(n) if j != i) for i in range(n))
    return first, second, order


def forces(loc: np.ndarray, charges: np.ndarray) -> np.ndarray:
    """Clipped Coulomb forces ``[3, N, B]`` for positions ``loc [3, N, B]`` and charges ``charges [N, B]``.

    Batch-last layout, so that every elementwise operation runs over the long trajectory axis. The arithmetic
    follows the reference operation for operation -- squared distances as ``|a|^2 + |b|^2 - 2 a.b`` with the
    dot products from the same BLAS matmul, ``q_i q_j / r^3`` times ``x_i - x_j``, sums over ``j`` in sequential
    order -- so a trajectory agrees with the reference's one-at-a-time integration bit for bit on the same
    numpy/BLAS build, and to round-off elsewhere. Each pair term is computed once (for ``i < j``) and used with
    its sign for ``j > i``, which is exact because every factor is symmetric in ``i, j`` bit for bit.
    """
    first, second, order = _pairs(loc.shape[1])
    sq = (loc[0] ** 2 + loc[1] ** 2) + loc[2] ** 2  # [N, B]
    batch_first = np.ascontiguousarray(
        loc.transpose(2, 0, 1)
    )  # [B, 3, N], the reference's per-trajectory layout
    gram = np.matmul(batch_first.transpose(0, 2, 1), batch_first)  # [B, N, N]
    dist2 = sq[first] + sq[second] - 2 * gram[:, first, second].T  # [P, B] over pairs i < j
    size = charges[first] * charges[second] / np.power(dist2, 1.5)
    pair_terms = np.empty((3, len(first), loc.shape[2]))  # [3, P, B]: q_i q_j (x_i - x_j) / r^3
    for p, (i, j) in enumerate(zip(first, second)):  # slices: much faster than fancy indexing on this axis
        np.subtract(loc[:, i], loc[:, j], out=pair_terms[:, p])
    pair_terms *= size
    force = np.empty_like(loc)
    for i, pairs in enumerate(order):
        acc = force[:, i]
        for k, (p, flipped) in enumerate(pairs):
            if k == 0:
                np.multiply(pair_terms[:, p], -1.0 if flipped else 1.0, out=acc)
            elif flipped:
                acc -= pair_terms[:, p]
            else:
                acc += pair_terms[:, p]
    return np.clip(force, -MAX_FORCE, MAX_FORCE, out=force)


def integrate(
    loc0: np.ndarray, vel0: np.ndarray, charges: np.ndarray, frames: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Integrate from the initial states and return the requested saved frames.

    Stops after the last requested frame (frame ``k`` is the state after step ``SAMPLE_FREQ * (k + 1)``).
    Trajectories are integrated in chunks of ``CHUNK`` so that the working set stays in the CPU cache.

    Args:
        loc0, vel0: ``[B, 3, N]`` initial states (from :func:`draw_initial_states`).
        charges: ``[B, N, 1]``.
        frames: frame indices in ``0 .. N_FRAMES - 1``.

    Returns:
        ``loc [B, len(frames), 3, N]``, ``vel [B, len(frames), 3, N]`` (reference layout).
    """
    frames = [int(f) for f in frames]
    if not frames or min(frames) < 0 or max(frames) >= N_FRAMES:
        raise ValueError(f"frames must lie in 0..{N_FRAMES - 1}, got {frames}")
    save_at = {SAMPLE_FREQ * (f + 1): k for k, f in enumerate(frames)}
    out_loc = np.empty((loc0.shape[0], len(frames), *loc0.shape[1:]))
    out_vel = np.empty_like(out_loc)
    for start in range(0, loc0.shape[0], CHUNK):
        chunk = slice(start, start + CHUNK)
        q = np.ascontiguousarray(charges[chunk, :, 0].T)  # [N, b]
        loc = np.ascontiguousarray(loc0[chunk].transpose(1, 2, 0))  # [3, N, b]
        vel = np.ascontiguousarray(vel0[chunk].transpose(1, 2, 0))
        vel += DT * forces(loc, q)
        for step in range(1, max(save_at) + 1):
            loc += DT * vel
            if step in save_at:
                out_loc[chunk, save_at[step]] = loc.transpose(2, 0, 1)
                out_vel[chunk, save_at[step]] = vel.transpose(2, 0, 1)
            vel += DT * forces(loc, q)
    return out_loc, out_vel
