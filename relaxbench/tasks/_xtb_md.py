"""MD17-style energies and forces generated locally: Langevin MD of a small molecule with GFN2-xTB.

The stand-in for MD17 (Chmiela et al. 2017) that needs no download. ``generate_md`` runs
``n_trajectories`` independent Langevin trajectories (ASE's ``Langevin``, centre of mass fixed by ``FixCom``) of
``ase.build.molecule(molecule)``, each from ASE's reference geometry with its own Maxwell-Boltzmann
velocities, discards ``equilibration_steps`` steps, then keeps every ``stride``-th step (consecutive 0.5 fs
frames are nearly identical). Energies and forces come from GFN2-xTB through the ``tblite`` wheel
(``tblite.ase.TBLite``), converted from ASE's eV and eV/Angstrom to MD17's kcal/mol and kcal/mol/Angstrom.

All random draws (initial velocities, Langevin noise) come from one ``numpy.random.Generator`` seeded by
``seed``, trajectory after trajectory. tblite runs single-threaded (``threadpoolctl``) so that parallel
workflow jobs do not oversubscribe the cores; about 1-2 ms per MD step for ethanol on one core.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EV_TO_KCAL_MOL", "THEORY", "generate_md"]

#: 1 eV in kcal/mol (ASE's CODATA constants).
EV_TO_KCAL_MOL = 23.060548012069493
THEORY = "GFN2-xTB (tblite), Langevin MD"


def generate_md(
    molecule: str,
    n_frames: int,
    n_trajectories: int,
    stride: int,
    equilibration_steps: int,
    temperature_k: float,
    timestep_fs: float,
    friction_per_fs: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """Run the MD and return MD17's arrays.

    Args:
        molecule: a name ``ase.build.molecule`` knows (e.g. ``"CH3CH2OH"`` for ethanol).
        n_frames: frames kept in total, split as evenly as possible over the trajectories.
        n_trajectories: independent trajectories (own initial velocities and noise).
        stride: keep every ``stride``-th MD step.
        equilibration_steps: MD steps discarded at the start of each trajectory.
        temperature_k: Langevin thermostat temperature (K); also the initial Maxwell-Boltzmann temperature.
        timestep_fs: MD time step (fs).
        friction_per_fs: Langevin friction (1/fs).
        seed: seed of the single random stream.

    Returns:
        ``{"z": [N] int, "R": [n, N, 3] Angstrom, "E": [n, 1] kcal/mol, "F": [n, N, 3] kcal/mol/Angstrom}``.
    """
    from ase import units
    from ase.build import molecule as build_molecule
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from tblite.ase import TBLite  # loads tblite's OpenMP runtime before the thread limit is applied
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    per_traj = [n_frames // n_trajectories + (k < n_frames % n_trajectories) for k in range(n_trajectories)]
    positions, energies, forces = [], [], []
    with threadpool_limits(limits=1):
        for n_keep in per_traj:
            atoms = build_molecule(molecule)
            atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
            atoms.set_constraint(FixCom())
            MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_k, rng=rng)
            Stationary(atoms)
            ZeroRotation(atoms)
            dyn = Langevin(
                atoms,
                timestep_fs * units.fs,
                temperature_K=temperature_k,
                friction=friction_per_fs / units.fs,
                fixcm=False,
                rng=rng,
            )
            if equilibration_steps:
                dyn.run(equilibration_steps)
            for _ in range(n_keep):
                dyn.run(stride)
                positions.append(atoms.get_positions())
                energies.append(atoms.get_potential_energy())
                forces.append(atoms.get_forces(apply_constraint=False))  # -dE/dR, not the FixCom projection
    return {
        "z": build_molecule(molecule).get_atomic_numbers().astype(np.int64),
        "R": np.asarray(positions, dtype=np.float64),
        "E": np.asarray(energies, dtype=np.float64)[:, None] * EV_TO_KCAL_MOL,
        "F": np.asarray(forces, dtype=np.float64) * EV_TO_KCAL_MOL,
    }
