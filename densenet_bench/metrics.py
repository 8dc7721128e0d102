"""What a measurement means: the model's FLOPs, the machine's GEMM peak, and the rates that follow.

FLOPs are counted per image, layer by layer from the parameter table:
- `forward_macs`: multiply-accumulates of every conv and linear layer. A conv weight (O, I, kh, kw)
  applied at an output of H x W pixels costs O * I * kh * kw * H * W, a linear (out, in) costs
  out * in. This is the papers' and torchvision's count ("GFLOPS" 2.83 for DenseNet-121 at 224),
  the matrix-multiply work that the machine's GEMM peak is compared with.
- `forward_ops`: the same plus one operation per element for every BatchNorm (a fused
  scale-and-shift), every ReLU (each BN here is followed by one) and every pooling input, the way
  profilers such as ptflops count: 2.87 G for DenseNet-121 at 224. Concatenation is free.

Training is counted as 3x the forward (the backward computes gradients for the activations and for
the weights, each about one forward), the usual convention for model FLOPs; the recomputation of
--memory-efficient is extra work and deliberately not counted.

The machine's reference peak is a float32 matrix multiply, measured in the same run: a large square
GEMM is the best case for every framework's conv kernels (they lower to it), so a result's model
GFLOP/s divided by it says how close it comes to what the machine does. Measured with numpy's BLAS
in the spec environment, in its own process with the runners' thread count (CPU affinity):

    python -m densenet_bench.metrics N THREADS      prints one JSON object (THREADS 0: all CPUs)
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time

from densenet_bench.timing import pin
from densenet_spec.config import DenseNetConfig, spatial_sizes
from densenet_spec.params import param_specs

TRAIN_FACTOR = 3


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _layer_pixels(config: DenseNetConfig, height: int, width: int) -> dict[str, int]:
    """Pixels (H * W) at which each stage's convs and norms run, keyed by stage prefix."""
    sizes = spatial_sizes(config, height, width)
    if config.stem == "imagenet":  # conv and norm run before the max-pool
        h, w = _conv_out(height, 7, 2, 3), _conv_out(width, 7, 2, 3)
    else:
        h, w = sizes["stem"]
    pixels = {"stem": h * w, "head": math.prod(sizes[f"blocks.{len(config.block_config) - 1}"])}
    for i in range(len(config.block_config)):
        pixels[f"blocks.{i}"] = math.prod(sizes[f"blocks.{i}"])
        pixels[f"transitions.{i}"] = pixels[f"blocks.{i}"]  # a transition convs, then pools
    return pixels


def _stage(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("blocks", "transitions") else parts[0]


def layer_macs(config: DenseNetConfig, height: int, width: int) -> dict[str, int]:
    """MACs per image of each conv and linear layer, in forward order."""
    pixels = _layer_pixels(config, height, width)
    macs = {}
    for spec in param_specs(config):
        layer = spec.name.rsplit(".", 1)[0]
        if spec.kind == "conv_weight":
            macs[layer] = math.prod(spec.shape) * pixels[_stage(layer)]
        elif spec.kind == "fc_weight":
            macs[layer] = math.prod(spec.shape)
    return macs


def elementwise_ops(config: DenseNetConfig, height: int, width: int) -> int:
    """BatchNorm + ReLU (one op each per element) and pooling (one per input element)."""
    pixels = _layer_pixels(config, height, width)
    ops = 0
    for spec in param_specs(config):
        if spec.kind == "bn_weight":
            ops += 2 * spec.shape[0] * pixels[_stage(spec.name)]
    if config.stem == "imagenet":
        ops += config.num_init_features * pixels["stem"]  # max-pool input
    for spec in param_specs(config):
        if spec.kind == "conv_weight" and spec.name.startswith("transitions."):
            ops += spec.shape[0] * pixels[_stage(spec.name)]  # average-pool input
    return ops + config.num_features * pixels["head"]  # global average pool input


def forward_macs(config: DenseNetConfig, height: int, width: int | None = None) -> int:
    """Conv and linear multiply-accumulates of one forward pass of one image."""
    return sum(layer_macs(config, height, height if width is None else width).values())


def forward_ops(config: DenseNetConfig, height: int, width: int | None = None) -> int:
    """forward_macs plus the elementwise work (BN, ReLU, pooling), as profilers count."""
    width = height if width is None else width
    return forward_macs(config, height, width) + elementwise_ops(config, height, width)


def step_flops(config: DenseNetConfig, image_size: int, batch: int, mode: str) -> float:
    """Model FLOPs of one timed step (2 per MAC): one forward, or 3x that for a train step."""
    flops = 2.0 * forward_macs(config, image_size) * batch
    return flops * (TRAIN_FACTOR if mode == "train" else 1)


def rates(line: dict) -> dict:
    """What a measured result line's step times mean: images per second (median, from the slowest
    and the fastest step), compile time beyond a step, achieved GFLOP/s and fraction of the peak."""
    median, batch = line["median_s"], line["batch"]
    config = DenseNetConfig.from_dict(line["config"])
    gflops = step_flops(config, line["image_size"], batch, line["mode"]) / median / 1e9
    peak = line.get("peak")
    return {
        "throughput": batch / median,
        "throughput_min": batch / line["max_s"],
        "throughput_max": batch / line["min_s"],
        "compile_s": max(line["first_call_s"] - median, 0.0),  # first call beyond a step
        "achieved_gflops": gflops,
        "fraction_of_peak": gflops / peak["gflops"] if peak else None,
    }


def _blas() -> str:
    import numpy as np

    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]
        return f"{deps['blas']['name']} {deps['blas'].get('version', '')}".strip()
    except Exception:  # older numpy: no mode="dicts"
        return "unknown"


def matmul_peak(n: int = 2048, repeats: int = 7) -> dict:
    """Median GFLOP/s of an n x n float32 matmul (2 n^3 FLOPs), after two warm-up products."""
    import numpy as np

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


def main(argv: list[str] | None = None) -> int:
    n, threads = (int(a) for a in (sys.argv[1:] if argv is None else argv))
    if threads:
        pin(threads)  # OpenBLAS starts its threads on first use
    result = matmul_peak(n)
    result["threads"] = threads or len(os.sched_getaffinity(0))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
