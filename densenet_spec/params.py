"""Canonical parameter names, shapes and layout, derived from the config; seeded initialisation.

Layout is PyTorch's, the one most readers know: conv weights OIHW, linear weights (out, in),
BatchNorm as weight (gamma), bias (beta), running_mean, running_var. Frameworks with other
native layouts transpose in their own weights.py, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from densenet_spec.config import DenseNetConfig

BN_LEAVES = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    # conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var, fc_weight,
    # fc_bias
    kind: str
    trainable: bool


def _bn(prefix: str, channels: int) -> list[ParamSpec]:
    return [
        ParamSpec(f"{prefix}.{leaf}", (channels,), f"bn_{leaf}", leaf in ("weight", "bias"))
        for leaf in BN_LEAVES
    ]


def _conv(prefix: str, out_ch: int, in_ch: int, k: int, bias: bool) -> list[ParamSpec]:
    specs = [ParamSpec(f"{prefix}.weight", (out_ch, in_ch, k, k), "conv_weight", True)]
    if bias:
        specs.append(ParamSpec(f"{prefix}.bias", (out_ch,), "conv_bias", True))
    return specs


def param_specs(config: DenseNetConfig) -> list[ParamSpec]:
    """Every tensor of the model, in forward order: the one table all frameworks map to."""
    c, bias = config, config.conv_bias
    specs: list[ParamSpec] = []
    if c.stem == "imagenet":
        specs += _conv("stem.conv", c.num_init_features, c.in_channels, 7, bias)
        specs += _bn("stem.norm", c.num_init_features)
    else:
        specs += _conv("stem.conv", c.num_init_features, c.in_channels, 3, bias)
    block_in = c.block_in_channels()
    for i, num_layers in enumerate(c.block_config):
        for j in range(num_layers):
            p, ch = f"blocks.{i}.layers.{j}", block_in[i] + j * c.growth_rate
            if c.bn_size is None:
                specs += _bn(f"{p}.norm", ch) + _conv(f"{p}.conv", c.growth_rate, ch, 3, bias)
            else:
                mid = c.bn_size * c.growth_rate
                specs += _bn(f"{p}.norm1", ch) + _conv(f"{p}.conv1", mid, ch, 1, bias)
                specs += _bn(f"{p}.norm2", mid) + _conv(f"{p}.conv2", c.growth_rate, mid, 3, bias)
        if i < len(c.block_config) - 1:
            ch = block_in[i] + num_layers * c.growth_rate
            out = c.transition_out_channels(ch)
            specs += _bn(f"transitions.{i}.norm", ch) + _conv(
                f"transitions.{i}.conv", out, ch, 1, bias
            )
    specs += _bn("head.norm", c.num_features)
    specs += [
        ParamSpec("head.fc.weight", (c.num_classes, c.num_features), "fc_weight", True),
        ParamSpec("head.fc.bias", (c.num_classes,), "fc_bias", True),
    ]
    return specs


def trainable_names(config: DenseNetConfig) -> list[str]:
    return [s.name for s in param_specs(config) if s.trainable]


def check_momentum_buffers(buffers: dict, config: DenseNetConfig, dtype: str | None = None) -> None:
    """Momentum buffers in canonical names (a checkpoint's, from any framework) that fit `config`:
    one per trainable tensor, each of its shape (and of `dtype` when given); an
    OptimizerStateError naming what differs otherwise, before anything is loaded."""
    from densenet_spec.errors import OptimizerStateError

    specs = {s.name: s.shape for s in param_specs(config) if s.trainable}
    missing = sorted(set(specs) - set(buffers))
    extra = sorted(set(buffers) - set(specs))
    shapes = [n for n in specs if n in buffers and tuple(np.shape(buffers[n])) != specs[n]]
    dtypes = sorted({str(np.asarray(b).dtype) for b in buffers.values()} - {dtype}) if dtype else []
    if missing or extra or shapes or dtypes:
        want = f", dtypes {dtypes} (want {dtype})" if dtype else ""
        raise OptimizerStateError(
            f"momentum buffers do not match the model: missing {missing[:4]}, unexpected "
            f"{extra[:4]}, mis-shaped {shapes[:4]}{want}"
        )


def count_parameters(config: DenseNetConfig) -> int:
    """Trainable parameters (running statistics excluded), as torch's numel() sum counts them."""
    return sum(int(np.prod(s.shape)) for s in param_specs(config) if s.trainable)


def stage_names(config: DenseNetConfig) -> list[str]:
    """Names of the per-stage outputs every forward_features returns, in forward order.

    blocks.i.layers.j is the layer's new growth_rate channels (before concatenation),
    blocks.i the concatenated block output, head the pooled features (N, C), logits (N, classes).
    """
    names = ["stem"]
    for i, num_layers in enumerate(config.block_config):
        names += [f"blocks.{i}.layers.{j}" for j in range(num_layers)]
        names.append(f"blocks.{i}")
        if i < len(config.block_config) - 1:
            names.append(f"transitions.{i}")
    return names + ["head", "logits"]


def init_params(
    config: DenseNetConfig, seed: int = 0, dtype=np.float32, *, randomize_bn: bool = False
) -> dict[str, np.ndarray]:
    """Deterministic initial weights in canonical layout.

    Conv weights: Kaiming normal (fan_in, ReLU gain), as torchvision's DenseNet. Conv and linear
    biases, and the linear weight: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default.
    BatchNorm: gamma 1, beta 0, running mean 0, running var 1, unless randomize_bn, which draws
    them away from those values so a parity check exercises every term of BN.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    fan_in: dict[str, int] = {}
    for s in param_specs(config):
        if s.kind in ("conv_weight", "fc_weight"):
            fan_in[s.name.rsplit(".", 1)[0]] = int(np.prod(s.shape[1:]))
        layer = s.name.rsplit(".", 1)[0]
        if s.kind == "conv_weight":
            v = rng.standard_normal(s.shape) * np.sqrt(2.0 / fan_in[layer])
        elif s.kind in ("conv_bias", "fc_bias", "fc_weight"):
            bound = 1.0 / np.sqrt(fan_in[layer])
            v = rng.uniform(-bound, bound, s.shape)
        elif not randomize_bn:
            v = np.full(s.shape, 1.0 if s.kind in ("bn_weight", "bn_running_var") else 0.0)
        elif s.kind in ("bn_weight", "bn_running_var"):
            v = rng.uniform(0.5, 1.5, s.shape)
        else:  # bn_bias, bn_running_mean
            v = rng.normal(0.0, 0.1, s.shape)
        out[s.name] = np.ascontiguousarray(v, dtype=dtype)
    return out
