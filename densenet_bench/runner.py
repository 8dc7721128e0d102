"""Entry point that runs one measurement inside one framework's environment.

    <env python> -m densenet_bench.runner '<request json>' <result file>

It imports densenet_bench.runners.<module> for the request's target (densenet_bench.targets),
whose prepare(request) builds the model and its synthetic batch, times it
(densenet_bench.timing.measure) and writes one JSON object:
the timings, host and device memory, versions and thread counts. A target that cannot run the
request (Unsupported) or that fails still answers, with ok false and the reason.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback

from densenet_bench.targets import get_target
from densenet_bench.timing import (
    Request,
    Unsupported,
    cpu_info,
    measure,
    os_threads,
    pin,
    rss_mb,
)


def run(req: Request) -> dict:
    """Build, time and describe one measurement; never raises (the reason goes in the answer)."""
    if req.threads:
        pin(req.threads)
    out: dict = {"ok": False, "python": platform.python_version(), **cpu_info()}
    out["load_avg_start"] = list(os.getloadavg())
    try:
        start = time.perf_counter()
        module = importlib.import_module(f"densenet_bench.runners.{get_target(req.target).runner}")
        if req.variant not in module.VARIANTS:
            raise Unsupported(f"{req.target} has no variant {req.variant!r} ({module.VARIANTS})")
        prepared = module.prepare(req)
        out["setup_s"] = time.perf_counter() - start  # import, build, data on the device
        out["rss_setup_mb"] = rss_mb()
        out.update(prepared.info)
        out.update(measure(prepared, req.warmup, req.iters))  # rss_peak_mb and its two parts
        peak = prepared.device_peak_bytes()
        out["device_peak_mb"] = None if peak is None else peak / 2**20
        out["os_threads"] = os_threads()
        out.update(prepared.after())
        out["ok"] = True
    except (Unsupported, NotImplementedError) as e:  # e.g. a framework without memory_efficient
        out["skipped"] = str(e)
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc()[-4000:]
    out["load_avg_end"] = list(os.getloadavg())
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    req = Request(**json.loads(argv[0]))
    result = run(req)
    tmp = argv[1] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
