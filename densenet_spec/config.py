"""One config describes a DenseNet for every framework.

Field names follow the paper and torchvision (growth_rate, block_config, bn_size, compression).
Only the standard library is used here, so the environment bootstrap can import it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import operator
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
        _normalize(self)
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
    def from_dict(cls, d: dict) -> DenseNetConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object (dict), got {type(d).__name__}")
        if not all(isinstance(k, str) for k in d):
            raise ConfigError(f"config field names must be strings, got {sorted(map(repr, d))}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config fields: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> DenseNetConfig:
        try:
            d = json.loads(text)
        except (TypeError, ValueError) as e:  # JSONDecodeError and undecodable bytes
            raise ConfigError(f"config is not valid JSON ({e})") from None
        return cls.from_dict(d)

    def replace(self, **changes) -> DenseNetConfig:
        return dataclasses.replace(self, **changes)

    def differences(self, other: DenseNetConfig) -> dict:
        """field -> (self's value, other's value) for every field that differs."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


INT_FIELDS = ("growth_rate", "num_init_features", "in_channels", "num_classes", "bn_size")
FLOAT_FIELDS = ("compression", "bn_eps", "bn_momentum")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_numpy_bool(v) -> bool:
    return type(v).__module__ == "numpy" and type(v).__name__ in ("bool", "bool_")


def _as_python(v, kind: type):
    """NumPy (or other numbers.Integral / numbers.Real) scalars as the Python int / float they
    stand for, so that validation, messages and to_json see plain values; anything else as is."""
    if isinstance(v, (bool, str, bytes)) or _is_numpy_bool(v):
        return v
    if kind is int and isinstance(v, numbers.Integral):
        return operator.index(v)
    if kind is float and isinstance(v, numbers.Real):
        return float(v)
    return v


def _normalize(c: DenseNetConfig) -> None:
    blocks = c.block_config
    if isinstance(blocks, (str, bytes)) or not hasattr(blocks, "__iter__"):
        raise ConfigError(f"block_config must be a sequence of layer counts, got {blocks!r}")
    if hasattr(blocks, "shape") and len(blocks.shape) != 1:  # a NumPy array
        raise ConfigError(f"block_config must be one-dimensional, got shape {blocks.shape}")
    object.__setattr__(c, "block_config", tuple(_as_python(n, int) for n in blocks))
    for name in INT_FIELDS:
        object.__setattr__(c, name, _as_python(getattr(c, name), int))
    for name in FLOAT_FIELDS:
        object.__setattr__(c, name, _as_python(getattr(c, name), float))
    if _is_numpy_bool(c.conv_bias):
        object.__setattr__(c, "conv_bias", bool(c.conv_bias))


def _real_in(c: DenseNetConfig, name: str, low: float, high: float, interval: str) -> None:
    """A finite real number within the interval written as `interval` (e.g. "(0, 1]")."""
    v = getattr(c, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok:
        ok = (low < v if interval[0] == "(" else low <= v) and (
            v < high if interval[-1] == ")" else v <= high
        )
    if not ok:
        raise ConfigError(f"{name} must be a finite number in {interval}, got {v!r}")


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
    if c.bn_size is not None and (not _is_int(c.bn_size) or c.bn_size <= 0):
        raise ConfigError(f"bn_size must be None or a positive integer, got {c.bn_size!r}")
    _real_in(c, "compression", 0.0, 1.0, "(0, 1]")  # theta of DenseNet-C
    if not isinstance(c.conv_bias, bool):
        raise ConfigError(f"conv_bias must be a bool, got {c.conv_bias!r}")
    # An epsilon of 1 or more no longer guards a division: it rewrites the normalisation.
    _real_in(c, "bn_eps", 0.0, 1.0, "(0, 1)")
    _real_in(c, "bn_momentum", 0.0, 1.0, "[0, 1]")
    if not isinstance(c.stem, str) or c.stem not in STEMS:
        raise ConfigError(f"stem must be one of {STEMS}, got {c.stem!r}")
    if not isinstance(c.bn_running_var, str) or c.bn_running_var not in RUNNING_VAR_RULES:
        raise ConfigError(
            f"bn_running_var must be one of {RUNNING_VAR_RULES}, got {c.bn_running_var!r}"
        )
    channels = c.num_init_features
    for i, n in enumerate(c.block_config[:-1]):
        channels += n * c.growth_rate
        out = c.transition_out_channels(channels)
        if out < 1:
            raise ConfigError(f"transition {i} would have {out} channels (theta={c.compression})")
        channels = out


PRESETS: dict[str, DenseNetConfig] = {
    # d2l chapter 8.7: conv_block without bottleneck, conv bias on (PyTorch's default), 1 channel.
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
    """Smallest square image for which every stage keeps at least one pixel.

    Every stage's size is a non-decreasing function of the input size, so the smallest size that
    works is found by doubling, then bisecting: O(blocks^2) steps, where counting up took 2^blocks.
    """

    def fits(size: int) -> bool:
        return min(min(hw) for hw in spatial_sizes(config, size, size).values()) >= 1

    high = 1
    while not fits(high):
        high *= 2
    low = high // 2  # does not fit (or is 0)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high


def _dim(s, shape):
    """One dimension of an input shape as an int, or None where it is unknown: None (Keras,
    tf.function) or a symbolic dimension (jax.export) that has no integer value yet."""
    if s is None:
        return None
    if isinstance(s, (bool, str, bytes, float)) or _is_numpy_bool(s):
        raise InputShapeError(f"input shape must hold integers, got {shape!r}")
    try:
        return operator.index(s)
    except TypeError:
        pass
    value = getattr(s, "value", s)  # tf.compat.v1.Dimension
    if value is None:
        return None
    try:
        return int(value)
    except Exception:  # a symbolic dimension: checked when it has a value
        return None


def check_input_shape(
    config: DenseNetConfig, shape, layout: str = "NCHW", *, training: bool = False
):
    """Raise InputShapeError unless `shape` is a batch this network can run.

    Every framework calls this at its edge, so the same bad input gets the same named error.
    In train mode each BatchNorm needs more than one value per channel (the unbiased variance
    divides by n - 1), so a batch of one image that pools down to 1x1 is rejected too.
    """
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be NCHW or NHWC, got {layout!r}")
    try:
        raw = tuple(shape)
    except TypeError:
        raise InputShapeError(
            f"input shape must be a sequence of dimensions, got {shape!r}"
        ) from None
    shape = tuple(_dim(s, raw) for s in raw)
    if len(shape) != 4:
        axes = (
            "batch, channels, height, width"
            if layout == "NCHW"
            else "batch, height, width, channels"
        )
        raise InputShapeError(f"input must have rank 4 ({layout}: {axes}), got shape {shape}")
    n, c, h, w = shape if layout == "NCHW" else (shape[0], shape[3], shape[1], shape[2])
    if any(d is not None and d < 0 for d in shape):
        raise InputShapeError(f"input shape has a negative dimension: {shape}")
    if c is not None and c != config.in_channels:
        raise InputShapeError(
            f"input has {c} channels, the model expects {config.in_channels} "
            f"({layout} shape {shape})"
        )
    if n is not None and n < 1:
        raise InputShapeError(f"input batch is empty (shape {shape})")
    if h is None or w is None:  # unknown image size (a symbolic or None dimension)
        return
    sizes = spatial_sizes(config, h, w)
    if min(min(hw) for hw in sizes.values()) < 1:
        m = min_image_size(config)
        raise InputShapeError(
            f"image {h}x{w} is too small for this network: the smallest square input is {m}x{m}"
        )
    if training and n is not None:
        smallest = min(hw[0] * hw[1] for hw in sizes.values())
        if n * smallest < 2:
            raise InputShapeError(
                "train-mode BatchNorm needs more than one value per channel: batch "
                f"{n} at {h}x{w} pools down to {n * smallest}; use a larger batch or image"
            )


FLOAT_DTYPES = ("float32", "float64")


def check_float_dtype(dtype, what: str = "model") -> str:
    """The dtype's name if it is float32 or float64, else DTypeError naming it (before any
    framework initialises anything with it)."""
    import numpy as np

    from densenet_spec.errors import DTypeError

    text = str(dtype)
    if text.startswith("torch."):
        name = text[len("torch.") :]
    else:
        try:
            name = np.dtype(getattr(dtype, "as_numpy_dtype", dtype)).name
        except TypeError:
            name = getattr(dtype, "name", None) or text
    if name not in FLOAT_DTYPES:
        raise DTypeError(f"{what} dtype must be float32 or float64, got {name}")
    return name


def check_labels(config: DenseNetConfig, labels, batch: int) -> None:
    """Training labels: integer class indices, one per image, in 0 .. num_classes - 1.

    Works on anything with .shape and .dtype that converts with numpy.asarray (every framework's
    tensors do); call it before the forward pass so a bad batch changes nothing."""
    import numpy as np

    from densenet_spec.errors import LabelError

    shape = tuple(getattr(labels, "shape", ()))
    dtype = getattr(labels, "dtype", None)
    try:  # NumPy, JAX, TF (as_numpy_dtype) and MXNet (a NumPy type) dtypes
        kind = np.dtype(getattr(dtype, "as_numpy_dtype", dtype)).kind
    except TypeError:  # torch: "torch.int64"
        kind = np.dtype(str(dtype).replace("torch.", "")).kind if dtype is not None else "O"
    if kind not in "iu":
        raise LabelError(f"labels must be integer class indices, got dtype {dtype}")
    if len(shape) != 1 or shape[0] != batch:
        raise LabelError(f"labels must have shape ({batch},), one per image, got {shape}")
    values = labels.asnumpy() if hasattr(labels, "asnumpy") else np.asarray(labels)
    if values.size and (values.min() < 0 or values.max() >= config.num_classes):
        bad = values[(values < 0) | (values >= config.num_classes)]
        raise LabelError(
            f"labels must be in 0..{config.num_classes - 1}, got {sorted(set(bad.tolist()))[:5]}"
        )
