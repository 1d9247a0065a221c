"""Time per training step of the N-body GNNs: relaxed (theta > 0, penalty on) and theta = 0 over plain.

Uses the shared harness of ``bench_step_time.py`` (plain, relaxed and projected steps alternated in one
process, median over rounds of the per-round ratios) on the ``nbody`` task with a batch of 100 trajectories
(the published batch size). Cases: EGNN at its defaults (the paper's 4 layers of 64), SEGNN at its CPU-scale
defaults and at the paper's scale (4 layers, 64 hidden, l_max 1), and the linear baseline.

    python benchmarks/bench_gnn_step.py [--cases egnn segnn ...] [--rounds 7] [--steps 5] [--threads 1]
"""

from __future__ import annotations

import sys

import bench_step_time as harness

NBODY = {"n_train": 100, "n_val": 1, "n_test": 1}
CASES = {
    "nbody:egnn": ("nbody", NBODY, "egnn", {}, 100),
    "nbody:segnn": ("nbody", NBODY, "segnn", {}, 100),
    "nbody:segnn-paper": ("nbody", NBODY, "segnn", {"hidden": 64, "layers": 4, "l_max": 1}, 100),
    "nbody:nbody_linear": ("nbody", NBODY, "nbody_linear", {}, 100),
}


def main(argv: list[str] | None = None) -> None:
    """The shared harness's table for the N-body cases (all of them unless ``--cases`` names some)."""
    harness.CASES.update(CASES)
    argv = sys.argv[1:] if argv is None else list(argv)
    harness.main(argv if "--cases" in argv else [*argv, "--cases", *CASES])


if __name__ == "__main__":
    main()
