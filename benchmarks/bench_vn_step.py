"""Training-step time of relaxed VN-PointNet over plain VN-PointNet, measured side by side in one process.

One step = forward, cross-entropy, the relaxation penalty (lambda = 0.01 on both terms, as published),
backward, Adam. The three variants run in turn, alternating, for ``--reps`` rounds of ``--steps`` steps;
the table gives medians and the ratios to plain. ``theta = 0`` is the projected model (the free branch is
not evaluated); ``theta = 0.5`` has the free branch and its penalties on. A second table times the penalty
of the largest relaxed layer alone: the structured form used here against the generic
``DenseRelaxedLinear`` with dense ``kron(I_C, L_a)`` generator matrices.

    python benchmarks/bench_vn_step.py                 # small defaults (the CPU config)
    python benchmarks/bench_vn_step.py --size paper    # the paper's widths: (21, 42, 341), head (512, 256)
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relaxbench.models import vn_pointnet  # noqa: E402
from relaxbench.models._vn_layers import RelaxedVNLinear, vn_generators  # noqa: E402
from relaxbench.relax import free_parameters, relaxation_penalty, relaxed_layers, set_theta  # noqa: E402
from relaxbench.relax.dense import DenseRelaxedLinear  # noqa: E402

SIZES = {
    "small": {"channels": (8, 16, 64), "head": (64, 32)},
    "paper": {"channels": (21, 42, 341), "head": (512, 256)},
}
LAMBDA = 0.01


def make_step(model: nn.Module, batch: dict[str, torch.Tensor]):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = nn.functional.cross_entropy(model(batch), batch["label"])
        penalty = relaxation_penalty(model)
        loss = loss + LAMBDA * (penalty["lie"] + penalty["norm"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(fn, n: int) -> float:
    """CPU seconds of this process per call: on a shared machine, wall time mostly measures the neighbours."""
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n


def bench_steps(args) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    batch = {"pos": torch.randn(args.batch, args.points, 3, generator=gen),
             "label": torch.randint(0, 40, (args.batch,), generator=gen)}
    params = {**SIZES[args.size], "k": args.k}
    models = {}
    for name, relaxed, theta in (("plain", False, 0.0), ("relaxed, theta=0", True, 0.0),
                                 ("relaxed, theta=0.5", True, 0.5)):
        torch.manual_seed(0)
        model = vn_pointnet.build({"num_classes": 40}, relaxed=relaxed, **params).train()
        set_theta(model, theta)
        models[name] = model
    steps = {name: make_step(model, batch) for name, model in models.items()}
    for step in steps.values():  # warm-up (allocator, first free-map update away from zero)
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.reps):
        for name, step in steps.items():
            times[name].append(timed(step, args.steps))
    medians = {name: statistics.median(t) for name, t in times.items()}
    plain = medians["plain"]
    equivariant = sum(p.numel() for p in models["plain"].parameters())
    free = sum(p.numel() for p in free_parameters(models["relaxed, theta=0.5"]))
    print(f"\nVN-PointNet training step ({args.size}: channels {params['channels']}, batch {args.batch}, "
          f"{args.points} points, k {args.k}, {torch.get_num_threads()} thread(s), median of {args.reps} x "
          f"{args.steps} steps)\n")
    print("| variant | CPU s / step | ratio to plain |\n|---|---|---|")
    for name, t in medians.items():
        print(f"| {name} | {t:.4f} | {t / plain:.2f}x |")
    print(f"\nparameters: plain {equivariant:,}; free maps add {free:,} ({free / equivariant:.2f}x the plain model; "
          f"{len(list(relaxed_layers(models['relaxed, theta=0.5'])))} relaxed VN linear maps)")
    return medians


def bench_penalty(args) -> None:
    """Penalty of the largest relaxed layer: structured (ours) vs dense generator matrices."""
    torch.manual_seed(0)
    model = vn_pointnet.build({"num_classes": 40}, relaxed=True, **SIZES[args.size], k=args.k).train()
    set_theta(model, 0.5)
    model({"pos": torch.randn(args.batch, args.points, 3)})
    layer = max((m for m in relaxed_layers(model) if isinstance(m, RelaxedVNLinear)),
                key=lambda m: m.free.weight.numel())
    c_in, c_out = layer.equivariant.c_in, layer.equivariant.c_out
    with torch.no_grad():
        layer.free.weight.normal_(0, 0.01)
    x = layer._last_input
    dense = DenseRelaxedLinear(nn.Linear(3 * c_in, 3 * c_out, bias=False), 3 * c_in, 3 * c_out,
                               vn_generators(c_in, torch.float32), vn_generators(c_out, torch.float32), bias=True)
    dense.free.load_state_dict(layer.free.state_dict())
    set_theta(dense, 0.5)
    dense.train()
    dense(x.reshape(x.shape[0], 3 * c_in, -1).transpose(1, 2))

    def penalty(relaxed):
        def run():
            relaxed._moments = None
            ld, sq = relaxed.penalty_terms()
            torch.autograd.grad(torch.sqrt(ld + 1e-8) + torch.sqrt(sq + 1e-8), relaxed.free.weight)
        return run

    runs = {"structured (RelaxedVNLinear)": penalty(layer), "dense generators (DenseRelaxedLinear)": penalty(dense)}
    times = {name: [] for name in runs}
    for _ in range(args.reps):
        for name, run in runs.items():
            times[name].append(timed(run, 2))
    print(f"\nPenalty (moments, Lie + norm terms, gradient) of the largest layer, {c_in}x3 -> {c_out}x3 "
          f"(generator buffers of the dense form: {2 * 3 * (3 * c_in) ** 2 * 4 / 2**20:.1f} MiB in float32)\n")
    print("| penalty | CPU s / call | ratio |\n|---|---|---|")
    base = statistics.median(times["structured (RelaxedVNLinear)"])
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.4f} | {statistics.median(t) / base:.2f}x |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--batch", type=int, default=24, help="clouds per batch (the paper: 24)")
    parser.add_argument("--points", type=int, default=300, help="points per cloud (the paper: 300)")
    parser.add_argument("--k", type=int, default=20, help="nearest neighbours (the paper: 20)")
    parser.add_argument("--reps", type=int, default=5, help="alternating rounds (the median is reported)")
    parser.add_argument("--steps", type=int, default=3, help="steps per round and variant")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("command: python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]))
    bench_steps(args)
    bench_penalty(args)


if __name__ == "__main__":
    main()
