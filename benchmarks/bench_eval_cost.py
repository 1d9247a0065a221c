"""Cost of the equivariance-error evaluation relative to one training epoch, per model of a config.

For each model entry of the config (its first task, the ``relaxed`` method where the model runs it, seed 0),
``relaxbench.train.Trainer`` is built exactly as a workflow job builds it; then one training epoch and one
evaluation of the equivariance error as the run records it (``Trainer.equivariance_error``:
``training.equivariance_examples`` test examples x ``equivariance_samples`` group elements, in
``equivariance_dtype``) are timed alternately, ``rounds`` times, in one process. The ratio reported is the
median over rounds of eval seconds / epoch seconds (wall time, one torch thread). Next to it, the floor of any
evaluation: one gradient-free forward pass of one training batch, over the epoch. The last columns time the
same evaluation of the unprojected model (the epoch's theta, free branch on), which a relaxed run repeats at a
few epochs (``Trainer.unprojected_check_epochs``), and give those checks' share of the run's training time
(``checks x unprojected eval / (epochs x epoch)``). Task data are generated into (or read from) the workflow's
cache folder ``results/<config>/data/<task>/<key>``.

    python benchmarks/bench_eval_cost.py [--config configs/default.yaml] [--rounds 3] [--models tfn egnn]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from relaxbench import registry
from relaxbench.config import RunSpec, load_config, resolve_run
from relaxbench.relax import set_theta
from relaxbench.threads import limit_threads
from relaxbench.train import Trainer

REPO = Path(__file__).resolve().parents[1]


def time_model(cfg: dict, model: str, rounds: int) -> dict[str, float | str]:
    entry = cfg["models"][model]
    methods = entry.get("methods", list(cfg["methods"]))
    method = "relaxed" if "relaxed" in methods else methods[0]
    resolved = resolve_run(cfg, RunSpec(entry["tasks"][0], model, method, 0))
    task = registry.get_task_class(resolved["task"])(
        resolved["task_params"],
        REPO / "results" / cfg["name"] / "data" / resolved["task"] / resolved["data_key"],
    )
    if not task.prepared():
        task.prepare()
    trainer = Trainer(resolved, task, task.load_splits(), torch.device("cpu"), quiet=True)
    tcfg = trainer.cfg
    batch = next(trainer.splits["train"].batches(tcfg["batch_size"]))
    epochs, evals, forwards, unprojected = [], [], [], []
    for r in range(rounds):
        epoch = min(r + 1, tcfg["epochs"] // 2)  # theta > 0 on the triangle schedule: the relaxed step
        t0 = time.perf_counter()
        row = trainer.train_epoch(epoch)
        epochs.append(time.perf_counter() - t0)
        set_theta(trainer.model, trainer.method.eval_theta(row["theta"]))
        t0 = time.perf_counter()
        err = trainer.equivariance_error()
        evals.append(time.perf_counter() - t0)
        set_theta(trainer.model, row["theta"])
        t0 = time.perf_counter()
        trainer.equivariance_error()
        unprojected.append(time.perf_counter() - t0)
        trainer.model.eval()  # as an evaluation runs it (train_epoch switches back)
        t0 = time.perf_counter()
        with torch.no_grad():
            task.predict(trainer.model, batch)
        forwards.append(time.perf_counter() - t0)
    return {
        "case": f"{resolved['task']}:{model}:{method}",
        "epoch_s": statistics.median(epochs),
        "eval_s": statistics.median(evals),
        "ratio": statistics.median(e / t for e, t in zip(evals, epochs)),
        "forward_ratio": statistics.median(f / t for f, t in zip(forwards, epochs)),
        "eval": f"{err.n_examples} x {err.n_elements} {err.dtype}",
        "steps": -(-len(trainer.splits["train"]) // tcfg["batch_size"]),  # ceil
        "unprojected_s": statistics.median(unprojected),
        "checks": len(trainer.unprojected_check_epochs()),
        "checks_over_run": len(trainer.unprojected_check_epochs())
        * statistics.median(unprojected)
        / (tcfg["epochs"] * statistics.median(epochs)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs/default.yaml")
    parser.add_argument("--models", nargs="*", default=None, help="model entries (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    limit_threads(1)
    cfg = load_config(args.config)
    print(f"# {' '.join(['python', *sys.argv])}")
    print(f"# torch {torch.__version__}, 1 thread, median of {args.rounds} rounds (epoch, then evaluation)")
    print(
        f"{'case':<38}{'steps/epoch':>12}{'epoch s':>10}{'eval s':>9}{'eval/epoch':>12}{'1 fwd/epoch':>13}"
        f"{'unproj. s':>11}{'checks':>8}{'checks/run':>12}  evaluation"
    )
    ratios = []
    for model in args.models or list(cfg["models"]):
        r = time_model(cfg, model, args.rounds)
        ratios.append(r["ratio"])
        print(
            f"{r['case']:<38}{r['steps']:>12}{r['epoch_s']:>10.3f}{r['eval_s']:>9.3f}{r['ratio']:>12.3f}"
            f"{r['forward_ratio']:>13.3f}{r['unprojected_s']:>11.3f}{r['checks']:>8}{r['checks_over_run']:>12.3f}"
            f"  {r['eval']}"
        )
    print(f"# median over models: {statistics.median(ratios):.3f} (goal: at most 0.10)")


if __name__ == "__main__":
    main()
