"""Cost of the relaxation for the steerable CNN, as ratios measured in one process.

- training step of the relaxed model over its plain twin: at theta = 0 (projected: the free branch is not
  evaluated; should be 1.0x) and at theta > 0 with the Lie + norm penalty on (the paper's training);
- evaluation throughput of the projected model exported to plain torch modules (escnn ``export()``) over
  the escnn model in eval mode.

Configurations alternate within every repetition and the ratio of medians is reported (the machine is
shared and noisy; absolute times are printed for orientation only). One thread.

    python benchmarks/bench_cnn_step.py [--group C --N 8 --channels 8 16 16 --batch 64 --reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch.nn import functional as F

from relaxbench.models import steerable_cnn
from relaxbench.relax import relaxation_penalty, set_theta


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", default="C", choices=["C", "D", "SO2"])
    parser.add_argument("--N", type=int, default=8)
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 16])
    parser.add_argument("--size", type=int, default=29, help="image side (odd)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval-batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="training steps per timing")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--theta", type=float, default=0.5)
    parser.add_argument("--lam", type=float, default=0.01, help="weight of both penalty terms")
    parser.add_argument("--penalty-examples", type=int, default=16,
                        help="also time the penalty on this many examples per batch (0: skip)")
    return parser.parse_args()


def main() -> None:
    args = parse()
    torch.set_num_threads(1)
    spec = {"kind": "image_classification", "channels": 1, "size": args.size, "num_classes": 10}
    params = {"group": args.group, "N": args.N, "channels": args.channels}
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(args.batch, 1, args.size, args.size, generator=gen),
             "label": torch.randint(0, 10, (args.batch,), generator=gen)}
    eval_batch = {"image": torch.rand(args.eval_batch, 1, args.size, args.size, generator=gen)}

    torch.manual_seed(0)
    plain = steerable_cnn.build(spec, **params)
    torch.manual_seed(0)
    relaxed = steerable_cnn.build(spec, relaxed=True, free_init_std=0.01, **params)
    runs = {"plain": (plain, 0.0), "relaxed theta=0": (relaxed, 0.0),
            f"relaxed theta={args.theta} + penalty": (relaxed, args.theta)}
    if args.penalty_examples:
        torch.manual_seed(0)
        sub = steerable_cnn.build(spec, relaxed=True, free_init_std=0.01, penalty_examples=args.penalty_examples,
                                  **params)
        runs[f"  ... penalty on {args.penalty_examples}/{args.batch}"] = (sub, args.theta)
    optims = {id(m): torch.optim.Adam(m.parameters(), lr=1e-3) for m, _ in runs.values()}

    def train_steps(name: str) -> float:
        model, theta = runs[name]
        opt = optims[id(model)]
        set_theta(model, theta)
        model.train()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = F.cross_entropy(model(batch), batch["label"])
            if theta > 0:
                pen = relaxation_penalty(model)
                loss = loss + args.lam * (pen["lie"] + pen["norm"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / args.steps

    set_theta(relaxed, 0.0)
    exported = plain.export_for_eval()
    evaluators = {"escnn eval": plain, "exported eval": exported}

    @torch.no_grad()
    def eval_time(name: str) -> float:
        model = evaluators[name]
        model.eval()
        t0 = time.perf_counter()
        model(eval_batch)
        return time.perf_counter() - t0

    for name in runs:  # warm-up (allocations, escnn caches)
        train_steps(name)
    for name in evaluators:
        eval_time(name)
    times: dict[str, list[float]] = {name: [] for name in [*runs, *evaluators]}
    for _ in range(args.reps):
        for name in runs:
            times[name].append(train_steps(name))
        for name in evaluators:
            times[name].append(eval_time(name))
    med = {name: statistics.median(v) for name, v in times.items()}

    print(f"steerable CNN {args.group}{args.N if args.group != 'SO2' else ''}, fields {args.channels}, "
          f"{args.size}x{args.size} images, 1 thread, median of {args.reps} repetitions")
    print(f"{'configuration':<36}{'seconds':>10}{'ratio':>9}")
    for name in runs:
        print(f"{'train step, ' + name:<36}{med[name]:>10.4f}{med[name] / med['plain']:>8.2f}x")
    for name in evaluators:
        ratio = med["escnn eval"] / med[name]
        print(f"{name + f' ({args.eval_batch} images)':<36}{med[name]:>10.4f}{ratio:>8.2f}x throughput")
    print("command: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
