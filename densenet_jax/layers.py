"""DenseNet building blocks in Flax NNX (d2l chapter 8.7 names), channels last (NHWC).

Modules read like their PyTorch counterparts (explicit in/out channels, `.train()` / `.eval()`).
As the flax imagenet example passes `norm` and `conv`, the blocks build their layers with
`norm_layer(num_features, config)` and `conv_layer` (nnx.Conv's arguments), dtype and rngs bound.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from densenet_jax.batchnorm import BatchNorm
from densenet_spec.config import DenseNetConfig

CHANNEL_AXIS = -1  # NHWC
Layer = Callable[..., nnx.Module]


def batch_norm(
    num_features: int, config: DenseNetConfig, *, dtype=jnp.float32, cls: Layer = BatchNorm
) -> nnx.Module:
    """BatchNorm set to the spec (batchnorm.py: nnx.BatchNorm has no unbiased running variance)."""
    return cls(
        num_features,
        momentum=1.0 - config.bn_momentum,  # parity: Flax's momentum weighs the old running value
        epsilon=config.bn_eps,  # parity: the spec's eps (Flax's default 1e-5 agrees)
        unbiased_running_var=config.bn_running_var == "unbiased",  # parity: torch's rule
        dtype=dtype,
        param_dtype=dtype,
    )


def conv_block(
    in_channels: int, out_channels: int, config: DenseNetConfig, *, norm_layer, conv_layer
) -> nnx.Module:
    """d2l's conv_block: BN, ReLU, 3x3 conv (pad 1 keeps the spatial size for concatenation)."""
    return _ConvBlock(
        norm=norm_layer(in_channels, config),
        # parity: explicit symmetric padding, never nnx.Conv's default 'SAME'
        conv=conv_layer(in_channels, out_channels, (3, 3), padding=1, use_bias=config.conv_bias),
    )


class DenseBlock(nnx.Module):
    """Dense connectivity: each layer sees the concatenation of all earlier feature maps."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        config: DenseNetConfig,
        *,
        norm_layer: Layer,
        conv_layer: Layer,
    ):
        layer = conv_block if config.bn_size is None else bottleneck_block
        self.layers = nnx.List(
            [
                layer(
                    in_channels + j * growth_rate,
                    growth_rate,
                    config,
                    norm_layer=norm_layer,
                    conv_layer=conv_layer,
                )
                for j in range(num_layers)
            ]
        )

    def __call__(self, x: jax.Array, features: dict | None = None) -> jax.Array:
        """features, if given, collects each layer's output y as "layers.<j>"."""
        for j, layer in enumerate(self.layers):
            y = layer(x)
            if features is not None:
                features[f"layers.{j}"] = y
            x = jnp.concatenate([x, y], axis=CHANNEL_AXIS)
        return x


def transition_block(
    in_channels: int, out_channels: int, config: DenseNetConfig, *, norm_layer, conv_layer
) -> nnx.Module:
    """Between dense blocks: BN, ReLU, 1x1 conv (compression), 2x2/2 average pool (floor)."""
    return _Transition(
        norm=norm_layer(in_channels, config),
        conv=conv_layer(in_channels, out_channels, (1, 1), padding=0, use_bias=config.conv_bias),
    )


def bottleneck_block(
    in_channels: int, growth_rate: int, config: DenseNetConfig, *, norm_layer, conv_layer
) -> nnx.Module:
    """DenseNet-B layer: a 1x1 conv to bn_size * k channels bounds the 3x3 conv's input width."""
    mid, bias = config.bn_size * growth_rate, config.conv_bias
    return _Bottleneck(
        norm1=norm_layer(in_channels, config),
        conv1=conv_layer(in_channels, mid, (1, 1), padding=0, use_bias=bias),
        norm2=norm_layer(mid, config),
        conv2=conv_layer(mid, growth_rate, (3, 3), padding=1, use_bias=bias),
    )


class _ConvBlock(nnx.Module):
    def __init__(self, norm: nnx.Module, conv: nnx.Module):
        self.norm, self.conv = norm, conv

    def __call__(self, x):
        return self.conv(nnx.relu(self.norm(x)))


class _Transition(nnx.Module):
    def __init__(self, norm: nnx.Module, conv: nnx.Module):
        self.norm, self.conv = norm, conv

    def __call__(self, x):
        x = self.conv(nnx.relu(self.norm(x)))
        return nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))  # 'VALID': floor, as torch


class _Bottleneck(nnx.Module):
    def __init__(self, norm1: nnx.Module, conv1: nnx.Module, norm2: nnx.Module, conv2: nnx.Module):
        self.norm1, self.conv1, self.norm2, self.conv2 = norm1, conv1, norm2, conv2

    def __call__(self, x):
        x = self.conv1(nnx.relu(self.norm1(x)))
        return self.conv2(nnx.relu(self.norm2(x)))
