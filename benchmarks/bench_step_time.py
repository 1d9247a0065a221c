"""Time per training step: relaxed (theta > 0, penalty on) and projected (theta = 0) over plain equivariant.

For every case (task, model, params) the plain and the relaxed model are built from one seed, and steps of the
three variants are timed alternately in one process (``rounds`` rounds of ``steps`` steps each), so that the
machine's noise hits all three alike; the ratio reported is the median over rounds of the per-round ratios.
A step is what the trainer does: forward, task loss, the method's regulariser, backward, optimiser step.

    python benchmarks/bench_step_time.py [--cases tetris:tfn ...] [--rounds 7] [--steps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch

from relaxbench import registry
from relaxbench.methods import get_method
from relaxbench.relax import set_theta
from relaxbench.train import regulariser

# (task, task params, model, model params, batch size): the default CPU-scale settings of each family.
CASES = {
    "tetris:tfn": ("tetris", {"n_train": 4}, "tfn", {}, 32),
}


def make_step(model, task, batch, method, theta):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        set_theta(model, theta)
        model.train()
        pred = task.predict(model, batch)
        loss = task.loss(pred, batch)
        reg, _ = regulariser(model, method, theta)
        optimizer.zero_grad(set_to_none=True)
        (loss + reg).backward()
        optimizer.step()

    return step


def time_case(name: str, rounds: int, steps: int) -> dict[str, float]:
    task_name, task_params, arch, params, batch_size = CASES[name]
    with tempfile.TemporaryDirectory() as tmp:
        task = registry.get_task_class(task_name)(task_params, tmp)
        task.prepare()
        batch = task.load_splits()["train"].head(batch_size)
    entry = registry.get_model(arch)
    torch.manual_seed(0)
    plain = entry.build(task.spec, relaxed=False, **params)
    torch.manual_seed(0)
    relaxed = entry.build(task.spec, relaxed=True, **params)
    method = get_method("relaxed")
    variants = {
        "plain": make_step(plain, task, batch, get_method("equivariant"), 0.0),
        "relaxed": make_step(relaxed, task, batch, method, 0.5),
        "theta0": make_step(relaxed, task, batch, method, 0.0),
    }
    for step in variants.values():  # warm-up
        step()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for key, step in variants.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            times[key].append((time.perf_counter() - t0) / steps)
    ratio = lambda key: statistics.median(a / b for a, b in zip(times[key], times["plain"]))  # noqa: E731
    return {
        "plain_ms": 1e3 * statistics.median(times["plain"]),
        "relaxed_over_plain": ratio("relaxed"),
        "theta0_over_plain": ratio("theta0"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {' '.join(['python', *sys.argv])}")
    print(f"# torch {torch.__version__}, {args.threads} thread(s), median of {args.rounds} rounds x {args.steps} steps")
    print(f"{'case':<28}{'plain ms/step':>15}{'relaxed/plain':>15}{'theta0/plain':>15}")
    for name in args.cases:
        r = time_case(name, args.rounds, args.steps)
        print(f"{name:<28}{r['plain_ms']:>15.2f}{r['relaxed_over_plain']:>15.3f}{r['theta0_over_plain']:>15.3f}")


if __name__ == "__main__":
    main()
