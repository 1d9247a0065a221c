"""Evaluation throughput of a projected steerable CNN exported to plain torch modules over the escnn model.

The trainer evaluates a projected steerable CNN through ``export_for_eval()`` (escnn's ``export()``); this
measures what that buys, alternating the two in one process (median of ``--reps`` repetitions, CPU time, one
thread). Training-step ratios of every family are in ``bench_step_time.py``.

    python benchmarks/bench_cnn_export.py [--group C --N 8 --channels 8 16 16 --eval-batch 256 --reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from relaxbench.models import steerable_cnn
from relaxbench.threads import limit_threads


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", default="C", choices=["C", "D"])
    parser.add_argument("--N", type=int, default=8)
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 16])
    parser.add_argument("--size", type=int, default=29, help="image side (odd)")
    parser.add_argument("--eval-batch", type=int, default=256)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)
    limit_threads(1)
    spec = {"kind": "image_classification", "channels": 1, "size": args.size, "num_classes": 10}
    torch.manual_seed(0)
    model = steerable_cnn.build(spec, group=args.group, N=args.N, channels=args.channels).eval()
    evaluators = {"escnn": model, "exported": model.export_for_eval()}
    batch = {
        "image": torch.rand(
            args.eval_batch, 1, args.size, args.size, generator=torch.Generator().manual_seed(0)
        )
    }
    with torch.no_grad():
        assert torch.allclose(evaluators["escnn"](batch), evaluators["exported"](batch), atol=1e-4)
        times: dict[str, list[float]] = {name: [] for name in evaluators}
        for _ in range(args.reps + 1):  # the first round warms up
            for name, module in evaluators.items():
                t0 = time.process_time()
                module(batch)
                times[name].append(time.process_time() - t0)
    med = {name: statistics.median(v[1:]) for name, v in times.items()}
    print(f"# python {' '.join(sys.argv)}")
    print(
        f"# {args.group}{args.N}, fields {args.channels}, {args.eval_batch} images of {args.size}x{args.size}, "
        f"1 thread, median of {args.reps}"
    )
    for name, seconds in med.items():
        print(f"{name:<10}{seconds:>9.4f} s  {med['escnn'] / seconds:>5.2f}x throughput")


if __name__ == "__main__":
    main()
