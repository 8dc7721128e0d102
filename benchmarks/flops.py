"""Forward cost of a DenseNet from its config, counted layer by layer from the parameter table.

Two counts, both per image:
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
"""

from __future__ import annotations

import math

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
