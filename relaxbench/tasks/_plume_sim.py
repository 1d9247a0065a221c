"""PhiFlow smoke-plume simulations: the data of Wang, Walters and Yu (ICML 2022), Table 2 of the paper.

The recipe of the published ``data_gen.ipynb`` (written for PhiFlow 2.0.1), in PhiFlow 3.4 / phiml 1.16:
a closed square box of side 64 (physical units), smoke advected by MacCormack (dt 1), velocity by
semi-Lagrangian advection, a buoyancy force ``b * smoke`` resampled onto the staggered velocity grid, then a
pressure projection (a direct sparse solve in float64; conjugate gradients at the published tolerance diverge
on the first steps). A disc of smoke (radius 5) is added at the inflow every step. One frame is saved per step
(the published files drop the first; so does :func:`simulate`).

Grids: ``resolution`` cells per side over the same physical box (the published data use 64; 32 halves the cost
of everything downstream and keeps the physics). Simulations that share a grid run in one batch along the
PhiFlow batch dimension ``sim``, with the step function traced once (``jit_compile`` on the torch backend)
when the run is long enough to repay the trace (:data:`JIT_MIN_STEPS`).

Layout of the returned frames ``[S, T, 2, H, W]`` (float32): row 0 is the **top** of the box (the PhiFlow
arrays' y axis is flipped, so an image shows the plume upright), channel 0 is the velocity component along +x
(the W axis, rightwards), channel 1 the component along +y (upwards, i.e. towards row 0). With this layout a
counter-clockwise rotation of the flow by 90 degrees is ``torch.rot90(v, 1, dims=(-2, -1))`` on the grid and
``(v0, v1) -> (-v1, v0)`` on the components, which is escnn's action of ``rot2dOnR2(4)`` on ``irrep(1)``.
Velocities are in physical units per time unit. ``sampling="centers"`` averages the staggered faces onto
cell centres (the grid a 90-degree rotation maps onto itself); ``"staggered"`` is the published crop of the
staggered tensor (x-faces on the left, y-faces on the bottom of each cell).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

__all__ = [
    "BOX",
    "INFLOW_RADIUS",
    "JIT_MIN_STEPS",
    "ROTATION_SIDES",
    "SAMPLINGS",
    "Simulation",
    "rotation_sims",
    "scale_factors",
    "scale_sims",
    "simulate",
]

#: Side of the box in physical units (the published grid has one cell per unit).
BOX = 64.0
INFLOW_RADIUS = 5.0
#: Inflow centre (x, y; y up) and inward unit normal of the four sides, in the published order j = 0..3:
#: bottom, right, top, left. Simulation k (1-based) uses side (k - 1) mod 4 and buoyancy 0.025 k.
ROTATION_SIDES = (
    ((32.0, 5.0), (0.0, 1.0)),
    ((59.0, 32.0), (-1.0, 0.0)),
    ((32.0, 59.0), (0.0, -1.0)),
    ((5.0, 32.0), (1.0, 0.0)),
)
ROTATION_BUOYANCY = 0.025
SCALE_BUOYANCY = 0.1
SAMPLINGS = ("centers", "staggered")
#: Runs of at least this many steps trace the step function (``jit_compile``); shorter ones run it as it is
#: (a trace costs about as much as ten untraced steps).
JIT_MIN_STEPS = 12


@dataclass(frozen=True)
class Simulation:
    """Frames of a batch of simulations and the largest divergence left by the pressure projections.

    Attributes:
        frames: ``[S, T, 2, H, W]`` float32 velocities (layout in the module docstring).
        max_divergence: ``max |div v|`` over all steps, cells and simulations after projection (1/time).
        max_speed: ``max |v|`` over the saved frames (velocity units; the scale of ``max_divergence``).
    """

    frames: np.ndarray
    max_divergence: float
    max_speed: float


def simulate(
    resolution: int,
    centers: np.ndarray,
    forces: np.ndarray,
    n_frames: int,
    *,
    box: float = BOX,
    radius: float = INFLOW_RADIUS,
    velocity_dt: float = 1.0,
    sampling: str = "centers",
) -> Simulation:
    """Run ``S`` plumes on one ``resolution x resolution`` grid of a ``box x box`` domain, batched.

    Args:
        resolution: cells per side.
        centers: ``[S, 2]`` inflow centres (x, y; physical units, y up).
        forces: ``[S, 2]`` buoyancy per unit smoke density (x, y).
        n_frames: frames kept per simulation (``n_frames + 1`` steps are run, the first frame dropped).
        box: side of the domain (physical units); radius: inflow disc radius (physical units).
        velocity_dt: time step of the velocity self-advection (1 for rotation, 0.5 in the published scale set).
        sampling: ``"centers"`` or ``"staggered"`` (module docstring).

    Returns:
        A :class:`Simulation` with frames ``[S, n_frames, 2, resolution, resolution]``.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    from phi.torch import flow as phi  # noqa: PLC0415  (seconds to import; only the data job needs it)

    math = phi.math
    centers, forces = np.asarray(centers, dtype=np.float64), np.asarray(forces, dtype=np.float64)
    frames, divergence, speed = [], 0.0, 0.0
    with math.precision(64), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)  # torch sparse-CSR beta notices
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation (phiml traces)
        warnings.filterwarnings("ignore", message=".*[Rr]ank deficiency.*")  # closed box: p up to a constant
        grid = {"x": resolution, "y": resolution, "bounds": phi.Box(x=box, y=box)}
        at = math.tensor(centers, phi.batch("sim"), phi.channel(vector="x,y"))
        buoyancy = math.tensor(forces, phi.batch("sim"), phi.channel(vector="x,y"))
        inflow = phi.CenteredGrid(phi.Sphere(center=at, radius=radius), phi.extrapolation.BOUNDARY, **grid)
        # zero fields with every dimension the step returns, so that the step is traced once
        smoke = inflow * 0.0
        velocity = phi.resample(smoke * buoyancy, to=phi.StaggeredGrid(0, phi.extrapolation.ZERO, **grid))
        solve = phi.Solve("scipy-direct", 1e-5, 1e-5, rank_deficiency=0)

        def step(smoke, velocity):
            smoke = phi.advect.mac_cormack(smoke, velocity, dt=1.0) + inflow
            force = phi.resample(smoke * buoyancy, to=velocity)
            velocity = phi.advect.semi_lagrangian(velocity, velocity, dt=velocity_dt) + force
            velocity, _ = phi.fluid.make_incompressible(velocity, (), solve)
            div = math.max(abs(phi.field.divergence(velocity).values), dim="x,y")
            sampled = velocity.at_centers().values if sampling == "centers" else velocity.staggered_tensor()
            return smoke, velocity, sampled, div

        advance = math.jit_compile(step) if n_frames + 1 >= JIT_MIN_STEPS else step
        for i in range(n_frames + 1):
            smoke, velocity, sampled, div = advance(smoke, velocity)
            if i == 0:
                continue
            array = sampled.numpy("sim,vector,y,x")[..., :resolution, :resolution]
            frames.append(array[..., ::-1, :])  # row 0 = top of the box
            divergence = max(divergence, float(np.max(div.numpy("sim"))))
            speed = max(speed, float(np.max(np.abs(array))))
    out = np.stack(frames, axis=1).astype(np.float32)
    return Simulation(np.ascontiguousarray(out), divergence, speed)


def rotation_sims(ks: list[int], resolution: int, n_frames: int, sampling: str = "centers") -> Simulation:
    """The published rotation set's simulations ``ks`` (1-based): inflow on side ``(k - 1) mod 4`` of
    :data:`ROTATION_SIDES`, buoyancy ``0.025 k`` along that side's inward normal; all in one batch.

    Returns frames ``[len(ks), n_frames, 2, resolution, resolution]``.
    """
    sides = [ROTATION_SIDES[(k - 1) % 4] for k in ks]
    centers = np.array([c for c, _ in sides])
    forces = np.array([np.multiply(n, ROTATION_BUOYANCY * k) for k, (_, n) in zip(ks, sides)])
    return simulate(resolution, centers, forces, n_frames, sampling=sampling)


def scale_factors() -> np.ndarray:
    """The published scale factors ``linspace(1, 5, 41)``; scale simulation ``i`` uses factor ``[i]``."""
    return np.linspace(1.0, 5.0, 41)


def scale_sims(indices: list[int], resolution: int, n_frames: int, sampling: str = "centers") -> Simulation:
    """The published scale set's simulations ``indices``: the bottom plume on a box ``s`` times larger at the
    same cell size (``int(resolution s)`` cells, inflow at ``(32 s, 5 s)``, radius ``5 s``, buoyancy
    ``0.1 s``, velocity advected with dt 0.5), bilinearly down-sampled to ``resolution`` cells
    (``align_corners=True``) and divided by ``s``. One PhiFlow run per factor (the grids differ).

    Returns frames ``[len(indices), n_frames, 2, resolution, resolution]``.
    """
    factors = scale_factors()
    frames, divergence, speed = [], 0.0, 0.0
    for i in indices:
        s = float(factors[i])
        cells = int(resolution * s)
        box = cells * BOX / resolution
        run = simulate(
            cells,
            np.array([[BOX / 2 * s, 5.0 * s]]),
            np.array([[0.0, SCALE_BUOYANCY * s]]),
            n_frames,
            box=box,
            radius=INFLOW_RADIUS * s,
            velocity_dt=0.5,
            sampling=sampling,
        )
        fine = torch.from_numpy(run.frames[0]).double()  # [T, 2, cells, cells]
        coarse = F.interpolate(fine, size=(resolution, resolution), mode="bilinear", align_corners=True) / s
        frames.append(coarse.float().numpy())
        divergence, speed = max(divergence, run.max_divergence), max(speed, run.max_speed)
    return Simulation(np.stack(frames), divergence, speed)
