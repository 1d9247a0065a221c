"""Time to prepare each task's data cold (generate or convert) and to load it again from the cache.

Uses the task parameters of a config (default: configs/default.yaml), each task in a fresh folder.

    python benchmarks/bench_data.py [--config configs/default.yaml] [--tasks nbody md ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from relaxbench import registry
from relaxbench.config import load_config

REPO = Path(__file__).resolve().parents[1]


def time_task(name: str, params: dict) -> tuple[float, float, dict[str, int]]:
    """Seconds cold, seconds cached, and the split sizes."""
    cls = registry.get_task_class(name)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cls(params, tmp).prepare()
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        task = cls(params, tmp)
        assert task.prepared()
        splits = task.load_splits()
        cached = time.perf_counter() - t0
    return cold, cached, {k: len(v) for k, v in splits.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs/default.yaml")
    parser.add_argument("--tasks", nargs="*")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    tasks = args.tasks or sorted({m_task for m in cfg["models"].values() for m_task in m["tasks"]})
    print(f"# {' '.join(['python', *sys.argv])}")
    print(f"{'task':<12}{'cold s':>10}{'cached s':>10}  splits")
    for name in tasks:
        cold, cached, sizes = time_task(name, cfg["tasks"].get(name, {}))
        print(f"{name:<12}{cold:>10.2f}{cached:>10.3f}  {sizes}")


if __name__ == "__main__":
    main()
