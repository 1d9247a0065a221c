"""One thread count for the whole process: torch, and the BLAS / OpenMP pools of numpy, scipy and friends.

Snakemake runs every job with ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` ... set to
its ``threads``, before anything loads. ``relaxbench train --threads N`` and the timing benchmarks do the
same from inside the process: the variables for libraries loaded later (escnn brings scipy's own OpenBLAS),
``threadpoolctl`` for those already loaded (numpy's OpenBLAS, torch's OpenMP). Without it, a job meant to
use one core has idle OpenBLAS threads spinning on the others after each small numpy call.
"""

from __future__ import annotations

import os

import torch
from threadpoolctl import threadpool_limits

__all__ = ["THREAD_VARIABLES", "limit_threads"]

#: Environment variables read by BLAS and OpenMP libraries when they load (the ones Snakemake sets).
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def limit_threads(n: int) -> None:
    """Use ``n`` threads in torch and in every BLAS / OpenMP pool, loaded now or later in this process."""
    os.environ.update({name: str(n) for name in THREAD_VARIABLES})
    torch.set_num_threads(n)
    threadpool_limits(n)
