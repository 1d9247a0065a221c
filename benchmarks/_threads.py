"""Thread limits for the timing benchmarks: the same as a workflow job's.

Snakemake runs every job with ``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` ... set to the
job's ``threads``; a benchmark must do the same, or idle OpenBLAS threads that spin after each small numpy call
(escnn's representation matrices, a 2x2 inverse) are counted in the process's CPU time.
"""

from __future__ import annotations

import torch
from threadpoolctl import threadpool_limits


def limit_threads(n: int) -> None:
    """Use ``n`` threads in torch and in every BLAS / OpenMP pool loaded now or later in this process."""
    torch.set_num_threads(n)
    threadpool_limits(n)
