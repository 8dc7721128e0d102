"""One config describes a DenseNet for every framework.

Field names follow the paper and torchvision (growth_rate, block_config, bn_size, compression).
Only the standard library is used here, so the environment bootstrap can import it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from densenet_spec.errors import ConfigError, InputShapeError, UnknownPresetError

STEMS = ("imagenet", "cifar")
RUNNING_VAR_RULES = ("unbiased", "biased")


@dataclass(frozen=True)
class DenseNetConfig:
    """A DenseNet architecture (Huang et al. 2017; d2l chapter 8.7).

    stem: "imagenet" is conv 7x7/2 pad 3, BN, ReLU, max-pool 3x3/2 pad 1;
          "cifar" is a single conv 3x3/1 pad 1 (the paper's CIFAR networks, no BN in the stem).
    bn_size: None for the d2l conv_block (BN, ReLU, 3x3 conv); an int for DenseNet-B, whose
             layers first reduce to bn_size * growth_rate channels with a 1x1 conv.
    compression: theta of DenseNet-C; a transition maps m channels to floor(theta * m).
    bn_momentum: weight of the new batch statistic in the running-stat update
                 (running = (1 - bn_momentum) * running + bn_momentum * batch), torch's convention.
    bn_running_var: "unbiased" updates the running variance with the batch variance times
                    n / (n - 1), n = batch * height * width (torch, cuDNN); "biased" uses it as is.
                    Normalisation in train mode always uses the biased batch variance.
    """

    growth_rate: int = 32
    block_config: tuple[int, ...] = (4, 4, 4, 4)
    num_init_features: int = 64
    stem: str = "imagenet"
    bn_size: int | None = None
    compression: float = 0.5
    conv_bias: bool = True
    in_channels: int = 1
    num_classes: int = 10
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    bn_running_var: str = "unbiased"

    def __post_init__(self):
        object.__setattr__(self, "block_config", tuple(self.block_config))
        _validate(self)

    # Channel arithmetic, derived once here so every framework builds the same widths.
    def block_in_channels(self) -> list[int]:
        """Channels entering each dense block."""
        channels, result = self.num_init_features, []
        for i, num_layers in enumerate(self.block_config):
            result.append(channels)
            channels += num_layers * self.growth_rate
            if i < len(self.block_config) - 1:
                channels = self.transition_out_channels(channels)
        return result

    def transition_out_channels(self, in_channels: int) -> int:
        return int(math.floor(self.compression * in_channels + 1e-9))

    @property
    def num_features(self) -> int:
        """Channels before the classifier."""
        last_in = self.block_in_channels()[-1]
        return last_in + self.block_config[-1] * self.growth_rate

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["block_config"] = list(self.block_config)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "DenseNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config fields: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "DenseNetConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> "DenseNetConfig":
        return dataclasses.replace(self, **changes)

    def differences(self, other: "DenseNetConfig") -> dict:
        """field -> (self's value, other's value) for every field that differs."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate(c: DenseNetConfig) -> None:
    def positive_int(name):
        v = getattr(c, name)
        if not _is_int(v) or v <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")

    for name in ("growth_rate", "num_init_features", "in_channels", "num_classes"):
        positive_int(name)
    if len(c.block_config) == 0:
        raise ConfigError("block_config must name at least one dense block, got ()")
    for i, n in enumerate(c.block_config):
        if not _is_int(n) or n <= 0:
            raise ConfigError(f"block_config[{i}] must be a positive integer, got {n!r}")
    if c.stem not in STEMS:
        raise ConfigError(f"stem must be one of {STEMS}, got {c.stem!r}")
    if c.bn_size is not None and (not _is_int(c.bn_size) or c.bn_size <= 0):
        raise ConfigError(f"bn_size must be None or a positive integer, got {c.bn_size!r}")
    if isinstance(c.compression, bool) or not isinstance(c.compression, (int, float)) or not (
        0.0 < c.compression <= 1.0
    ):
        raise ConfigError(f"compression (theta) must be in (0, 1], got {c.compression!r}")
    if not isinstance(c.conv_bias, bool):
        raise ConfigError(f"conv_bias must be a bool, got {c.conv_bias!r}")
    if not isinstance(c.bn_eps, (int, float)) or isinstance(c.bn_eps, bool) or c.bn_eps <= 0:
        raise ConfigError(f"bn_eps must be > 0, got {c.bn_eps!r}")
    if (
        not isinstance(c.bn_momentum, (int, float))
        or isinstance(c.bn_momentum, bool)
        or not (0.0 <= c.bn_momentum <= 1.0)
    ):
        raise ConfigError(f"bn_momentum must be in [0, 1], got {c.bn_momentum!r}")
    if c.bn_running_var not in RUNNING_VAR_RULES:
        raise ConfigError(f"bn_running_var must be one of {RUNNING_VAR_RULES}, got {c.bn_running_var!r}")
    channels = c.num_init_features
    for i, n in enumerate(c.block_config[:-1]):
        channels += n * c.growth_rate
        out = c.transition_out_channels(channels)
        if out < 1:
            raise ConfigError(f"transition {i} would have {out} channels (theta={c.compression})")
        channels = out


PRESETS: dict[str, DenseNetConfig] = {
    # d2l chapter 8.7: conv_block without bottleneck, conv bias on (PyTorch's default), 1 channel in.
    "d2l": DenseNetConfig(),
    # The paper's ImageNet DenseNet-BC models; numbers as in torchvision.
    "densenet121": DenseNetConfig(32, (6, 12, 24, 16), 64, "imagenet", 4, 0.5, False, 3, 1000),
    "densenet161": DenseNetConfig(48, (6, 12, 36, 24), 96, "imagenet", 4, 0.5, False, 3, 1000),
    "densenet169": DenseNetConfig(32, (6, 12, 32, 32), 64, "imagenet", 4, 0.5, False, 3, 1000),
    "densenet201": DenseNetConfig(32, (6, 12, 48, 32), 64, "imagenet", 4, 0.5, False, 3, 1000),
    # CIFAR DenseNet-BC (L=100, k=12): (100 - 4) / 6 = 16 bottleneck layers per block, stem 2k.
    "densenet_bc_100": DenseNetConfig(12, (16, 16, 16), 24, "cifar", 4, 0.5, False, 3, 10),
    # Used for testing only: bottleneck, biases and an odd width (7) so floor(theta * m) matters.
    "tiny": DenseNetConfig(3, (2, 2), 7, "imagenet", 2, 0.5, True, 3, 5),
}


def get_preset(name: str) -> DenseNetConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(
            f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}"
        ) from None


def spatial_sizes(config: DenseNetConfig, height: int, width: int) -> dict[str, tuple[int, int]]:
    """(H, W) after each stage, in forward order; sizes may reach 0 for too-small images."""

    def conv(size, k, s, p):
        return (size + 2 * p - k) // s + 1

    h, w = height, width
    if config.stem == "imagenet":
        h, w = conv(h, 7, 2, 3), conv(w, 7, 2, 3)
        h, w = conv(h, 3, 2, 1), conv(w, 3, 2, 1)
    sizes = {"stem": (h, w)}
    for i in range(len(config.block_config)):
        sizes[f"blocks.{i}"] = (h, w)
        if i < len(config.block_config) - 1:
            h, w = h // 2, w // 2
            sizes[f"transitions.{i}"] = (h, w)
    return sizes


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF/XLA 'same' padding (before, after) of a kernel x kernel / stride op on `size`.

    out = ceil(size / stride); the total padding goes mostly after: the ImageNet stem's 7x7/2 conv
    pads (2, 3) and its 3x3/2 max-pool (0, 1) on even sizes, where the spec pads (3, 3) and (1, 1).
    Only the --mutate same_padding self-check uses it: it is the d2l JAX/TF tabs' mistake.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def min_image_size(config: DenseNetConfig) -> int:
    """Smallest square image for which every stage keeps at least one pixel."""
    size = 1
    while min(min(hw) for hw in spatial_sizes(config, size, size).values()) < 1:
        size += 1
    return size


def check_input_shape(config: DenseNetConfig, shape, layout: str = "NCHW", *, training: bool = False):
    """Raise InputShapeError unless `shape` is a batch this network can run.

    Every framework calls this at its edge, so the same bad input gets the same named error.
    In train mode each BatchNorm needs more than one value per channel (the unbiased variance
    divides by n - 1), so a batch of one image that pools down to 1x1 is rejected too.
    """
    shape = tuple(int(s) for s in shape)
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be NCHW or NHWC, got {layout!r}")
    if len(shape) != 4:
        axes = "batch, channels, height, width" if layout == "NCHW" else "batch, height, width, channels"
        raise InputShapeError(f"input must have rank 4 ({layout}: {axes}), got shape {shape}")
    n, c, h, w = shape if layout == "NCHW" else (shape[0], shape[3], shape[1], shape[2])
    if c != config.in_channels:
        raise InputShapeError(
            f"input has {c} channels, the model expects {config.in_channels} ({layout} shape {shape})"
        )
    if n < 1:
        raise InputShapeError(f"input batch is empty (shape {shape})")
    sizes = spatial_sizes(config, h, w)
    if min(min(hw) for hw in sizes.values()) < 1:
        m = min_image_size(config)
        raise InputShapeError(
            f"image {h}x{w} is too small for this network: the smallest square input is {m}x{m}"
        )
    if training:
        smallest = min(hw[0] * hw[1] for hw in sizes.values())
        if n * smallest < 2:
            raise InputShapeError(
                "train-mode BatchNorm needs more than one value per channel: batch "
                f"{n} at {h}x{w} pools down to {n * smallest}; use a larger batch or image"
            )
