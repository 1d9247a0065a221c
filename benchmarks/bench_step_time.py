"""Time per training step: relaxed (theta > 0, penalty on) and projected (theta = 0) over plain equivariant.

For every case (task, model, params) the plain and the relaxed model are built from one seed, and steps of the
three variants are timed alternately in one process (``rounds`` rounds of ``steps`` steps each), so that the
machine's noise hits all three alike; the ratio reported is the median over rounds of the per-round ratios.
Time is the process's CPU time (one torch thread), which a shared machine disturbs far less than wall time;
the BLAS/OpenMP pools of numpy and friends are limited to the same threads, as Snakemake limits a job's
(``OPENBLAS_NUM_THREADS`` etc.): otherwise idle OpenBLAS threads spinning after a small numpy call are
counted as the step's CPU time.
A step is what the trainer does: forward, task loss, the method's regulariser, the free-branch shares
(``FreeShareMeter.update``), backward, optimiser step. The column ``shares/relaxed`` times the relaxed step with
the share recording over the same step without it (a fourth variant timed in the same rounds).
With ``--device cuda`` the models and the batch live on the GPU and a step is timed by the wall clock,
the GPU synchronised before and after (CPU time would miss the GPU's work).

    python benchmarks/bench_step_time.py [--cases tetris:tfn ...] [--rounds 7] [--steps 5] [--threads 1]
                                         [--device cpu|cuda]
    python benchmarks/bench_step_time.py --methods dual_ascent symmetrised ... [--cases ...]

With ``--methods``, each named method's step (its model as the trainer builds it, ``train.build_model``, at the
theta of its schedule's middle epoch, dual-ascent updates included) is timed against ``equivariant``'s instead.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time

import torch

from relaxbench import registry
from relaxbench.methods import get_method, regulariser
from relaxbench.relax import FreeShareMeter, free_parameters, set_theta
from relaxbench.relax.dual import dual_step
from relaxbench.threads import limit_threads
from relaxbench.train import build_model

# (task, task params, model, model params, batch size): each family at its CPU-scale default (the batch size of
# configs/default.yaml) and, where the paper's size differs and still fits a CPU, at the paper's size.
NBODY = {"n_train": 100, "n_val": 1, "n_test": 1}
TINY_MD = {
    "n_frames": 40,
    "n_trajectories": 1,
    "stride": 2,
    "equilibration_steps": 0,
    "n_train": 32,
    "n_val": 4,
}
DIGITS = {"n_train": 64, "n_val": 10, "n_test": 10}
SHAPES = {"n_points": 150, "n_train_per_class": 2, "n_val_per_class": 1, "n_test_per_class": 1}
PLUME = {  # the default config's plume shapes (32 x 32, 4 input frames, loss over 3 frames), 2 + 1 simulations
    "size": 32,
    "in_frames": 4,
    "out_frames": 3,
    "rollout": 3,
    "train_sims": [1, 2],
    "domain_sims": [5],
    "train_times": [0, 8],
    "val_times": [8, 10],
    "future_times": [10, 12],
    "domain_times": [0, 2],
}
PLUME_SCALE = {**PLUME, "symmetry": "scale", "train_sims": [0, 2], "domain_sims": [1]}
CASES = {
    "tetris:tfn": ("tetris", {"n_train": 4}, "tfn", {}, 16),
    "nbody:egnn": ("nbody", NBODY, "egnn", {}, 100),
    "nbody:segnn": ("nbody", NBODY, "segnn", {}, 100),
    "nbody:segnn(paper)": ("nbody", NBODY, "segnn", {"hidden": 64, "layers": 4, "l_max": 1}, 100),
    "rotdigits:steerable_cnn": ("rotdigits", DIGITS, "steerable_cnn", {}, 32),
    "rotdigits:steerable_cnn(full batch)": (
        "rotdigits",
        DIGITS,
        "steerable_cnn",
        {"penalty_examples": None},
        32,
    ),
    "rotdigits:steerable_cnn(pen8)": ("rotdigits", DIGITS, "steerable_cnn", {"penalty_examples": 8}, 32),
    "rotdigits:steerable_cnn(grid generators)": (
        "rotdigits",
        DIGITS,
        "steerable_cnn",
        {"generators": "grid"},
        32,
    ),
    "rotdigits:steerable_cnn(group generators)": (
        "rotdigits",
        DIGITS,
        "steerable_cnn",
        {"generators": "group"},
        32,
    ),
    "md:se3_transformer": ("md", TINY_MD, "se3_transformer", {}, 16),
    "md:se3_transformer(finite)": ("md", TINY_MD, "se3_transformer", {"lie_mode": "finite"}, 16),
    "plume:equiv": ("plume", PLUME, "equiv", {}, 8),
    "plume:rsteer": ("plume", PLUME, "rsteer", {}, 8),
    "plume:lift": ("plume", PLUME, "lift", {}, 8),
    "plume(scale):equiv": ("plume", PLUME_SCALE, "equiv", {}, 8),
    "plume(scale):rsteer": ("plume", PLUME_SCALE, "rsteer", {}, 8),
    "shapes:vn_pointnet": ("shapes", SHAPES, "vn_pointnet", {"k": 10}, 24),
    "shapes:vn_pointnet(paper)": (
        "shapes",
        SHAPES,
        "vn_pointnet",
        {"channels": [21, 42, 341], "head": [512, 256]},
        24,
    ),
}


def make_step(model, task, batch, method, theta, shares=True):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    meter = FreeShareMeter(model)

    def step():
        set_theta(model, theta)
        model.train()
        pred = task.predict(model, batch)
        loss = task.loss(pred, batch)
        reg, _ = regulariser(model, method, theta)
        if shares:
            meter.update()
        optimizer.zero_grad(set_to_none=True)
        (loss + reg).backward()
        optimizer.step()
        if method.dual != "none":
            dual_step(model, method.eta_dual, method.dual, method.rho)

    return step


def clock(device: torch.device):
    """Seconds so far: the process's CPU time on the CPU; on a GPU the wall clock once its queue is done."""
    if device.type != "cuda":
        return time.process_time

    def wall() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return wall


def load_case(name: str, device: torch.device):
    """``(task, one training batch on device, arch, params)`` of a case."""
    task_name, task_params, arch, params, batch_size = CASES[name]
    with tempfile.TemporaryDirectory() as tmp:
        task = registry.get_task_class(task_name)(task_params, tmp)
        task.prepare()
        batch = {k: v.to(device) for k, v in task.load_splits()["train"].head(batch_size).items()}
    return task, batch, arch, params


def time_variants(variants: dict, rounds: int, steps: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per step of each variant (a step function): ``rounds`` interleaved rounds of ``steps``."""
    for step in variants.values():  # warm-up
        step()
    times: dict[str, list[float]] = {k: [] for k in variants}
    now = clock(device)
    for _ in range(rounds):
        for key, step in variants.items():
            t0 = now()
            for _ in range(steps):
                step()
            times[key].append((now() - t0) / steps)
    return times


def median_ratio(times: dict[str, list[float]], key: str, base: str) -> float:
    return statistics.median(a / b for a, b in zip(times[key], times[base]))


def time_methods(
    name: str, methods: list[str], rounds: int, steps: int, device: torch.device
) -> dict[str, float]:
    """Each method's step time over ``equivariant``'s (and ``plain_ms``, equivariant's) for case ``name``; NaN for
    a method that does not apply to the model's family."""
    task, batch, arch, params = load_case(name, device)
    resolved = {"arch": arch, "family": None, "model_params": params, "model": arch}
    family = registry.get_model(arch).family
    applies = [m for m in methods if get_method(m).refuses(family) is None]
    variants = {}
    for key in ["equivariant", *applies]:
        torch.manual_seed(0)
        model, method = build_model(resolved, task, get_method(key))
        theta = method.theta_schedule(2)(1)  # the schedule's middle epoch
        variants[key] = make_step(model.to(device), task, batch, method, theta)
    times = time_variants(variants, rounds, steps, device)
    return {
        "plain_ms": 1e3 * statistics.median(times["equivariant"]),
        **{key: median_ratio(times, key, "equivariant") if key in applies else math.nan for key in methods},
    }


def time_case(name: str, rounds: int, steps: int, device: torch.device) -> dict[str, float]:
    task, batch, arch, params = load_case(name, device)
    entry = registry.get_model(arch)
    torch.manual_seed(0)
    plain = entry.build(task.spec, relaxed=False, **params).to(device)
    torch.manual_seed(0)
    relaxed = entry.build(task.spec, relaxed=True, **params).to(device)
    method = get_method("relaxed")
    variants = {
        "plain": make_step(plain, task, batch, get_method("equivariant"), 0.0),
        "relaxed": make_step(relaxed, task, batch, method, 0.5),
        "theta0": make_step(relaxed, task, batch, method, 0.0),
        "no_shares": make_step(relaxed, task, batch, method, 0.5, shares=False),
    }
    times = time_variants(variants, rounds, steps, device)
    ratio = lambda key: median_ratio(times, key, "plain")  # noqa: E731
    n_plain = sum(p.numel() for p in plain.parameters())
    return {
        "plain_ms": 1e3 * statistics.median(times["plain"]),
        "free_over_plain_params": sum(p.numel() for p in free_parameters(relaxed)) / n_plain,
        "relaxed_over_plain": ratio("relaxed"),
        "theta0_over_plain": ratio("theta0"),
        "shares_over_relaxed": median_ratio(times, "relaxed", "no_shares"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--methods", nargs="*", default=None, help="time these methods against equivariant")
    args = parser.parse_args(argv)
    limit_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU")
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) + ", wall time" if device.type == "cuda" else "CPU time"
    print(f"# {' '.join(['python', *sys.argv])}")
    print(
        f"# torch {torch.__version__}, {args.threads} thread(s), {where}, median of {args.rounds} rounds x "
        f"{args.steps} steps"
    )
    if args.methods:
        print(f"{'case':<44}{'equivariant ms':>15}" + "".join(f"{m:>24}" for m in args.methods))
        for name in args.cases:
            r = time_methods(name, args.methods, args.rounds, args.steps, device)
            print(f"{name:<44}{r['plain_ms']:>15.2f}" + "".join(f"{r[m]:>24.3f}" for m in args.methods))
        return
    print(
        f"{'case':<44}{'plain ms/step':>15}{'relaxed/plain':>15}{'theta0/plain':>15}{'free params':>13}"
        f"{'shares/relaxed':>16}"
    )
    for name in args.cases:
        r = time_case(name, args.rounds, args.steps, device)
        print(
            f"{name:<44}{r['plain_ms']:>15.2f}{r['relaxed_over_plain']:>15.3f}{r['theta0_over_plain']:>15.3f}"
            f"{r['free_over_plain_params']:>12.2f}x{r['shares_over_relaxed']:>16.3f}"
        )


if __name__ == "__main__":
    main()
