"""SE(3)-transformer: relaxed over plain training-step time, and the md task's data generation time.

Step times come from the shared harness (``bench_step_time.py``): plain and relaxed models built from one seed,
the three variants (plain; relaxed at theta = 0.5 with the penalty; relaxed projected to theta = 0) timed
alternately in one process, the ratio being the median over rounds of per-round ratios. A step is forward
(for ``md``: energy and forces with ``create_graph``), loss, regulariser, backward, optimiser step. Goal:
relaxed/plain <= 1.3, theta0/plain = 1.0.

The data rows time ``MD.prepare()`` of the task's default parameters in an empty folder (cold: the GFN2-xTB
molecular dynamics) and a fresh task on the same folder (cached: ``prepared()`` plus ``load_splits()``).

    python benchmarks/bench_se3_step.py [--rounds 7] [--steps 5] [--threads 1] [--cases ...] [--no-data]

Batch sizes: 8 (the paper's) for ``md``, 32 for ``md...(b32)`` and ``tetris``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step_time  # noqa: E402  (the shared harness, a sibling script)

from relaxbench.tasks.md import MD  # noqa: E402

TINY_MD = {"n_frames": 40, "n_trajectories": 1, "stride": 2, "equilibration_steps": 0, "n_train": 32, "n_val": 4}
CASES = {
    "md:se3_transformer": ("md", TINY_MD, "se3_transformer", {}, 8),
    "md:se3_transformer(finite)": ("md", TINY_MD, "se3_transformer", {"lie_mode": "finite"}, 8),
    "md:se3_transformer(b32)": ("md", TINY_MD, "se3_transformer", {}, 32),
    "tetris:se3_transformer": ("tetris", {"n_train": 4}, "se3_transformer", {}, 32),
}


def time_data() -> tuple[float, float, dict]:
    """Seconds to prepare the default md dataset cold and to reload it cached; and the task's facts."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        MD({}, tmp).prepare()
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        task = MD({}, tmp)
        assert task.prepared()
        splits = task.load_splits()
        cached = time.perf_counter() - t0
        facts = {**task.info["examples"], "force_scale": task.info["force_scale_kcal_mol_A"]}
        assert sum(len(s) for s in splits.values()) == task.info["n_frames"]
    return cold, cached, facts


def main(argv: list[str] | None = None) -> None:
    """The harness's table for :data:`CASES` (its options pass through), then the data timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-data", action="store_true", help="skip timing the default dataset generation")
    args, rest = parser.parse_known_args(argv)
    bench_step_time.CASES.update(CASES)
    bench_step_time.main(rest if "--cases" in rest else ["--cases", *CASES, *rest])
    if not args.no_data:
        cold, cached, facts = time_data()
        print(f"\nmd default dataset ({facts}): cold {cold:.1f} s, cached {cached:.3f} s, "
              f"cold/cached {cold / cached:.0f}x")


if __name__ == "__main__":
    main()
