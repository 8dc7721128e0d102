"""A DenseNet's config read off its canonical-named tensors, and what no tensor shows.

Shapes give the architecture: growth rate (a layer's output channels), block_config (layers per
block), bn_size (bottleneck width / growth rate), compression (transition out / in), the stem
(7x7 conv with BN, or 3x3 without), conv biases, input channels and classes. The BatchNorm
epsilon, momentum and running-variance rule are not in any tensor: each format states its
official model's (BatchNormFacts) and the converter carries them into the config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from densenet_convert.errors import NotADenseNetError, UnrecognisedConfigError
from densenet_spec.config import PRESETS, DenseNetConfig
from densenet_spec.errors import ConfigError, WeightKeysError
from densenet_spec.weightfile import check_tensors

# The fields the tensors' shapes decide; the others are BatchNorm conventions.
ARCHITECTURE = (
    "growth_rate",
    "block_config",
    "num_init_features",
    "stem",
    "bn_size",
    "compression",
    "conv_bias",
    "in_channels",
    "num_classes",
)


@dataclass(frozen=True)
class BatchNormFacts:
    """What an official model's BatchNorm does that its weight file does not record."""

    bn_eps: float
    bn_momentum: float  # torch's convention: the weight of the new batch statistic
    bn_running_var: str  # "unbiased" (n / (n - 1)) or "biased"
    source: str  # the layer that has these defaults, for messages

    def fields(self) -> dict:
        return {
            "bn_eps": self.bn_eps,
            "bn_momentum": self.bn_momentum,
            "bn_running_var": self.bn_running_var,
        }


def _shape(tensors: dict, name: str) -> tuple[int, ...]:
    return tuple(np.shape(tensors[name]))


def _layers_in_block(tensors: dict, i: int) -> int:
    j = 0
    while f"blocks.{i}.layers.{j}.norm1.weight" in tensors or (
        f"blocks.{i}.layers.{j}.norm.weight" in tensors
    ):
        j += 1
    return j


def _compression(tensors: dict, num_transitions: int) -> float:
    """theta such that floor(theta * m) is every transition's output width: 0.5 when it fits."""
    pairs = [_shape(tensors, f"transitions.{i}.conv.weight")[:2] for i in range(num_transitions)]
    if not pairs:
        return 0.5  # no transition: theta is never used
    candidates = [0.5, pairs[0][0] / pairs[0][1]]
    for theta in candidates:
        if 0 < theta <= 1 and all(out == int(math.floor(theta * m + 1e-9)) for out, m in pairs):
            return theta
    raise UnrecognisedConfigError(
        "the transitions' widths (out, in) = "
        f"{pairs} follow no single compression theta with out = floor(theta * in)"
    )


def recognise_config(tensors: dict, facts: BatchNormFacts) -> DenseNetConfig:
    """The DenseNetConfig whose canonical names and shapes are exactly `tensors`'."""
    if "stem.conv.weight" not in tensors or not any(n.startswith("blocks.0.") for n in tensors):
        raise NotADenseNetError("no stem convolution or first dense block among the tensors")
    stem_w = _shape(tensors, "stem.conv.weight")
    if len(stem_w) != 4:
        raise UnrecognisedConfigError(f"the stem convolution has shape {stem_w}, not 4-D")
    has_norm = "stem.norm.weight" in tensors
    if stem_w[2:] == (7, 7) and has_norm:
        stem = "imagenet"
    elif stem_w[2:] == (3, 3) and not has_norm:
        stem = "cifar"
    else:
        raise UnrecognisedConfigError(
            f"a {stem_w[2]}x{stem_w[3]} stem convolution {'with' if has_norm else 'without'} "
            "BatchNorm is neither stem the spec knows (imagenet: 7x7 + BN; cifar: 3x3 alone)"
        )
    block_config = []
    while _layers_in_block(tensors, len(block_config)):
        block_config.append(_layers_in_block(tensors, len(block_config)))
    if "blocks.0.layers.0.conv2.weight" in tensors:  # DenseNet-B bottleneck layers
        growth_rate = _shape(tensors, "blocks.0.layers.0.conv2.weight")[0]
        mid = _shape(tensors, "blocks.0.layers.0.conv1.weight")[0]
        if mid % growth_rate:
            raise UnrecognisedConfigError(
                f"bottleneck width {mid} is not a multiple of the growth rate {growth_rate}"
            )
        bn_size = mid // growth_rate
    elif "blocks.0.layers.0.conv.weight" in tensors:
        growth_rate, bn_size = _shape(tensors, "blocks.0.layers.0.conv.weight")[0], None
    else:
        raise UnrecognisedConfigError("the first dense layer has no convolution")
    if "head.fc.weight" not in tensors:
        raise UnrecognisedConfigError(
            "the file has no classifier (head.fc; keras include_top=False or a torchvision "
            "model without its classifier): this project's DenseNet always has one"
        )
    fields = dict(
        growth_rate=growth_rate,
        block_config=tuple(block_config),
        num_init_features=stem_w[0],
        stem=stem,
        bn_size=bn_size,
        compression=_compression(tensors, len(block_config) - 1),
        conv_bias="stem.conv.bias" in tensors,
        in_channels=stem_w[1],
        num_classes=_shape(tensors, "head.fc.weight")[0],
        **facts.fields(),
    )
    try:
        config = DenseNetConfig(**fields)
    except ConfigError as e:
        raise UnrecognisedConfigError(f"the shapes give an invalid config: {e}") from None
    try:
        check_tensors(tensors, config)
    except WeightKeysError as e:
        raise UnrecognisedConfigError(
            f"no DenseNetConfig has exactly these tensors; the nearest, {describe(config)}, "
            f"differs: {e}"
        ) from None
    return config


def preset_name(config: DenseNetConfig) -> str | None:
    """The preset with the same architecture (BatchNorm conventions may differ), if any."""
    for name, preset in PRESETS.items():
        if all(getattr(preset, f) == getattr(config, f) for f in ARCHITECTURE):
            return name
    return None


def check_preset(config: DenseNetConfig, name: str) -> None:
    """--preset NAME: the recognised architecture must be that preset's."""
    from densenet_spec.config import get_preset

    preset = get_preset(name)
    diff = {
        f: (getattr(config, f), getattr(preset, f))
        for f in ARCHITECTURE
        if getattr(config, f) != getattr(preset, f)
    }
    if diff:
        shown = "; ".join(f"{k}: file has {a!r}, {name} has {b!r}" for k, (a, b) in diff.items())
        raise UnrecognisedConfigError(f"the file is not a {name}: {shown}")


def describe(config: DenseNetConfig) -> str:
    """One line: the preset name when the architecture is one, then every field."""
    name = preset_name(config)
    fields = ", ".join(f"{k}={v!r}" for k, v in config.to_dict().items())
    return f"{name} ({fields})" if name else f"DenseNetConfig({fields})"


def floating(tensors: dict) -> dict[str, np.ndarray]:
    """One float dtype for all tensors, as the canonical file needs: float64 if any is, else
    float32 (float16 and bfloat16 widen exactly)."""
    arrays = {n: np.asarray(t) for n, t in tensors.items()}
    kinds = {a.dtype.kind for a in arrays.values()}
    if kinds - {"f"}:
        bad = sorted(n for n, a in arrays.items() if a.dtype.kind != "f")
        raise UnrecognisedConfigError(f"non-floating tensors where weights belong: {bad[:5]}")
    dtype = np.float64 if any(a.dtype == np.float64 for a in arrays.values()) else np.float32
    return {n: np.ascontiguousarray(a, dtype=dtype) for n, a in arrays.items()}
