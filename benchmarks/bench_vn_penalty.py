"""The Lie + norm penalty of VN-PointNet's largest relaxed layer: the structured form against dense generators.

``RelaxedVNLinear`` applies the so(3) generators to the 3x3 blocks of the free weight and takes the data from
the input's second moment; the generic ``DenseRelaxedLinear`` multiplies by dense ``kron(I_C, L_a)`` matrices.
Both give the same values (tested); this times moments, both terms and the gradient, alternating, CPU time.
Training-step ratios of every family are in ``bench_step_time.py``.

    python benchmarks/bench_vn_penalty.py                 # small defaults (the CPU config)
    python benchmarks/bench_vn_penalty.py --size paper    # the paper's widths: (21, 42, 341), head (512, 256)
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
from relaxbench.relax import relaxed_layers, set_theta  # noqa: E402
from relaxbench.relax.dense import DenseRelaxedLinear  # noqa: E402
from relaxbench.threads import limit_threads  # noqa: E402

SIZES = {
    "small": {"channels": (8, 16, 64), "head": (64, 32)},
    "paper": {"channels": (21, 42, 341), "head": (512, 256)},
}


def timed(fn, n: int) -> float:
    """CPU seconds of this process per call: on a shared machine, wall time mostly measures the neighbours."""
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n


def bench_penalty(args) -> None:
    """Penalty of the largest relaxed layer: structured (ours) vs dense generator matrices."""
    torch.manual_seed(0)
    model = vn_pointnet.build({"num_classes": 40}, relaxed=True, **SIZES[args.size], k=args.k).train()
    set_theta(model, 0.5)
    model({"pos": torch.randn(args.batch, args.points, 3)})
    layer = max(
        (m for m in relaxed_layers(model) if isinstance(m, RelaxedVNLinear)),
        key=lambda m: m.free.weight.numel(),
    )
    c_in, c_out = layer.equivariant.c_in, layer.equivariant.c_out
    with torch.no_grad():
        layer.free.weight.normal_(0, 0.01)
    x = layer._last_input
    dense = DenseRelaxedLinear(
        nn.Linear(3 * c_in, 3 * c_out, bias=False),
        3 * c_in,
        3 * c_out,
        vn_generators(c_in, torch.float32),
        vn_generators(c_out, torch.float32),
        bias=True,
    )
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

    runs = {
        "structured (RelaxedVNLinear)": penalty(layer),
        "dense generators (DenseRelaxedLinear)": penalty(dense),
    }
    times = {name: [] for name in runs}
    for _ in range(args.reps):
        for name, run in runs.items():
            times[name].append(timed(run, 2))
    buffers_mib = sum(b.numel() * b.element_size() for b in (dense.gen_in, dense.gen_out)) / 2**20
    print(
        f"\nPenalty (moments, Lie + norm terms, gradient) of the largest layer, {c_in}x3 -> {c_out}x3 "
        f"(generator buffers of the dense form: {buffers_mib:.1f} MiB in {dense.gen_in.dtype})\n"
    )
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
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    limit_threads(args.threads)
    print("command: python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]))
    bench_penalty(args)


if __name__ == "__main__":
    main()
