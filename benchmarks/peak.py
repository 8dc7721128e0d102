"""The machine's reference peak, measured in the same run: float32 matrix multiply GFLOP/s.

A large square GEMM is the best case for every framework's conv kernels (they lower to it), so a
result's model GFLOP/s divided by this number says how close it comes to what the machine does.
Measured with numpy's BLAS in the spec environment, in its own process with the same thread count
(CPU affinity) as the runners:

    python -m benchmarks.peak N THREADS      prints one JSON object (THREADS 0: all CPUs)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np


def _blas() -> str:
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]
        return f"{deps['blas']['name']} {deps['blas'].get('version', '')}".strip()
    except Exception:  # older numpy: no mode="dicts"
        return "unknown"


def matmul_peak(n: int = 2048, repeats: int = 7) -> dict:
    """Median GFLOP/s of an n x n float32 matmul (2 n^3 FLOPs), after two warm-up products."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    rate = [2.0 * n**3 / t / 1e9 for t in times]
    return {
        "gflops": statistics.median(rate),
        "gflops_min": min(rate),
        "gflops_max": max(rate),
        "n": n,
        "repeats": repeats,
        "numpy": np.__version__,
        "blas": _blas(),
        "load_avg": list(os.getloadavg()),
    }


def main(argv=None) -> int:
    n, threads = (int(a) for a in (sys.argv[1:] if argv is None else argv))
    if threads:
        from benchmarks.timing import pin

        pin(threads)  # numpy is already imported, but OpenBLAS starts its threads on first use
    result = matmul_peak(n)
    result["threads"] = threads or len(os.sched_getaffinity(0))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
