"""What every runner shares: the request, the timing loop, memory readings, synthetic data.

Runs inside the measured process (densenet_bench.runner), in every framework's environment,
including MXNet's numpy 1.23 one: standard library only at import time; numpy is imported where
synthetic data is made.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from densenet_spec.config import DenseNetConfig

MODES = ("infer", "train")


class Unsupported(Exception):
    """This target cannot run this request (a preset or option the implementation lacks)."""


@dataclass(frozen=True)
class Request:
    """One measurement: a target (our framework or a peer), one model and execution variant, one
    mode."""

    target: str
    variant: str  # how the model is executed: eager, channels_last, compile, jit, xla, hybridize...
    mode: str  # infer: eval-mode forward; train: forward + backward + SGD-momentum update
    preset: str
    config: dict  # DenseNetConfig.to_dict()
    batch: int
    image_size: int
    iters: int
    warmup: int
    memory_efficient: bool = False
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    model: str | None = None  # ours: "plain" or "fast" (variants.make_model); a peer: None

    def densenet_config(self) -> DenseNetConfig:
        return DenseNetConfig.from_dict(self.config)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Prepared:
    """A built model on its synthetic batch, ready to time."""

    step: Callable[[], Any]  # one inference or one train step
    sync: Callable[[Any], None]  # returns once the step's work is finished (async dispatch)
    info: dict = field(default_factory=dict)  # versions, threads, device name
    device_peak_bytes: Callable[[], int | None] = lambda: None
    # Extra facts read after the timed steps (so their cost is in no timing or memory reading).
    after: Callable[[], dict] = dict


def measure(prepared: Prepared, warmup: int, iters: int) -> dict:
    """First call (trace / compile) timed alone, `warmup` untimed calls, then `iters` timed ones.

    Peak RSS is read twice: up to the end of the first call (which includes compiling: XLA and
    torch.compile can need more host memory to compile than to run), and over the steady steps
    after it (the peak is reset in between where Linux allows it)."""
    step, sync = prepared.step, prepared.sync
    start = time.perf_counter()
    sync(step())
    first = time.perf_counter() - start
    first_peak = peak_rss_mb()
    trimmed = release_free_heap()
    steady_peak_known = reset_peak_rss()
    for _ in range(warmup):
        sync(step())
    times, cpu_times, faults = [], [], []
    for _ in range(iters):
        faults_start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start, cpu_start = time.perf_counter(), time.process_time()
        sync(step())
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_start)
    steady_peak = peak_rss_mb()
    return {
        "rss_first_call_peak_mb": first_peak,
        "rss_steady_peak_mb": steady_peak if steady_peak_known else None,
        "rss_peak_mb": max(first_peak, steady_peak),  # the whole process's peak
        "rss_trimmed": trimmed,
        "first_call_s": first,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": times,
        # CPU time of the whole process (all its threads) per step: with --threads 1 on a loaded
        # machine it moves less than wall time, so it is the fairer A/B of two variants there.
        "cpu_median_s": statistics.median(cpu_times),
        # Pages first touched per step. A runtime that allocates its scratch memory afresh in
        # every step (XLA's CPU executables do) pays one fault, and the kernel's zeroing, per
        # 4 KiB page of it; --huge-pages makes that one per 2 MiB.
        "minor_faults_per_step": statistics.median(faults),
    }


def _status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Current resident set size (Linux /proc), MiB."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (VmHWM, else getrusage)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024


def release_free_heap() -> bool:
    """Hand the heap that is free again back to the OS (glibc malloc_trim), so the steady peak
    after it counts what the steps use, not what compiling freed and malloc kept (XLA's LLVM
    compilation of a DenseNet frees about 2 GiB that would otherwise stay resident). Memory a
    framework's own allocator keeps (TF's BFC, MXNet's pool) stays counted."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # 1 if it released memory, 0 if none was free
    except (OSError, AttributeError):  # not glibc
        return False
    return True


def reset_peak_rss() -> bool:
    """Start the peak RSS afresh from the current RSS (Linux: "5" to /proc/self/clear_refs).

    False where that is not possible (then the peak keeps counting from the process start)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def os_threads() -> int | None:
    """Threads this process runs now (every pool a framework started)."""
    n = _status_kb("Threads")  # not KiB, just the count on that line
    return n


def pin(threads: int) -> None:
    """Run this process on its first `threads` CPUs, before any framework starts its pools.

    Every framework sizes its thread pools from the affinity mask (OpenMP, Eigen, XLA, oneDNN),
    so this is the one setting that binds them all; the environment variables set by the CLI
    and each runner's own call (torch.set_num_threads, TF intra-op threads) agree with it.
    """
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])


def cpu_info() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            names = (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
            model = next(names, "")
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cpu_count": os.cpu_count(), "usable_cpus": usable}


def synthetic_batch(req: Request, layout: str) -> tuple[Any, Any]:
    """Seeded float32 images (NCHW or NHWC) and integer labels, as numpy arrays."""
    import numpy as np

    c = req.densenet_config()
    rng = np.random.default_rng(req.seed)
    shape = (req.batch, c.in_channels, req.image_size, req.image_size)
    x = rng.standard_normal(shape, dtype=np.float32)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y = rng.integers(0, c.num_classes, req.batch)
    return x, y


def official_preset(req: Request) -> str:
    """The official implementations exist for the ImageNet DenseNet-BC presets only, with our
    preset's exact architecture (3 channels in, 1000 classes, no conv bias)."""
    from densenet_spec.config import PRESETS

    if req.preset not in ("densenet121", "densenet161", "densenet169", "densenet201"):
        raise Unsupported(f"no official {req.preset} (official: densenet121/161/169/201)")
    if req.densenet_config() != PRESETS[req.preset]:
        raise Unsupported(f"config differs from the {req.preset} preset")
    return req.preset
