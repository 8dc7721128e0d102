"""DenseNet building blocks in Flax NNX (d2l chapter 8.7 names), channels last (NHWC).

Modules read like their PyTorch counterparts: explicit in/out channels, `.train()` / `.eval()`
switch every BatchNorm between batch statistics and running statistics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from densenet_spec.config import DenseNetConfig

CHANNEL_AXIS = -1  # NHWC


class _BatchNorm(nnx.Module):
    """BatchNorm over N, H, W with the spec's running-statistic rule (torch's).

    nnx.BatchNorm cannot be configured to it: it updates the running variance with the biased
    batch variance, and by default computes the variance as E[x^2] - E[x]^2.
    """

    def __init__(self, num_features: int, config: DenseNetConfig, *, dtype):
        self.scale = nnx.Param(jnp.ones((num_features,), dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), dtype))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), dtype))
        self.var = nnx.BatchStat(jnp.ones((num_features,), dtype))
        self.epsilon = config.bn_eps  # parity: the spec's eps (Flax's default 1e-5 agrees)
        # parity: Flax's momentum weighs the old running value, torch's (the spec's) the new batch
        # statistic; nnx.BatchNorm's default 0.99 would be torch momentum 0.01.
        self.momentum = 1.0 - config.bn_momentum
        # parity: torch (and the spec by default) updates the running variance with the unbiased
        # batch variance, n / (n - 1) times the biased one; nnx.BatchNorm uses the biased one.
        self.unbiased_running_var = config.bn_running_var == "unbiased"
        self.use_running_average = False  # set by .train() / .eval()

    def __call__(self, x):
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            mean = jnp.mean(x, axis=(0, 1, 2))
            var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))  # biased, two-pass
            n = x.shape[0] * x.shape[1] * x.shape[2]
            running_var = var * (n / (n - 1)) if self.unbiased_running_var else var
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1.0 - m) * jax.lax.stop_gradient(mean)
            self.var[...] = m * self.var[...] + (1.0 - m) * jax.lax.stop_gradient(running_var)
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]


def batch_norm(num_features: int, config: DenseNetConfig, *, dtype=jnp.float32) -> _BatchNorm:
    """The spec's BatchNorm (eps, torch-convention momentum, unbiased running variance)."""
    return _BatchNorm(num_features, config, dtype=dtype)


def _conv(in_channels, out_channels, kernel_size, config, *, dtype, rngs, stride=1, padding=0):
    # parity: explicit symmetric padding. nnx.Conv defaults to 'SAME', which agrees for these
    # stride-1 convs but not for the stride-2 stem (model.py); no layer is left to the default.
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(kernel_size, kernel_size),  # an int would make a 1-D convolution
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        use_bias=config.conv_bias,
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
    )


class _ConvBlock(nnx.Module):
    def __init__(self, in_channels, out_channels, config, *, dtype, rngs):
        self.norm = batch_norm(in_channels, config, dtype=dtype)
        self.conv = _conv(in_channels, out_channels, 3, config, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.conv(nnx.relu(self.norm(x)))


def conv_block(
    in_channels: int, out_channels: int, config: DenseNetConfig, *, dtype=jnp.float32, rngs
) -> _ConvBlock:
    """d2l's conv_block: BN, ReLU, 3x3 conv (pad 1); the DenseNet layer without bottleneck."""
    return _ConvBlock(in_channels, out_channels, config, dtype=dtype, rngs=rngs)


def _layer_forward(layer, x):
    return layer(x)


# Recompute the layer in backward instead of keeping its BN/ReLU intermediates. The running
# statistics are an output of the forward pass, so they are updated exactly once.
_layer_forward_recomputed = nnx.remat(_layer_forward)


class DenseBlock(nnx.Module):
    """Dense connectivity: every layer sees the concatenation of all earlier outputs."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        config: DenseNetConfig,
        memory_efficient: bool = False,
        *,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        make_layer = conv_block if config.bn_size is None else bottleneck_block
        self.layers = nnx.List(
            [
                make_layer(in_channels + j * growth_rate, growth_rate, config,
                           dtype=dtype, rngs=rngs)
                for j in range(num_layers)
            ]
        )
        self.memory_efficient = memory_efficient

    def __call__(self, x, features: dict | None = None):
        forward = _layer_forward_recomputed if self.memory_efficient else _layer_forward
        for j, layer in enumerate(self.layers):
            y = forward(layer, x)
            if features is not None:
                features[f"layers.{j}"] = y
            x = jnp.concatenate([x, y], axis=CHANNEL_AXIS)
        return x


class _Transition(nnx.Module):
    def __init__(self, in_channels, out_channels, config, *, dtype, rngs):
        self.norm = batch_norm(in_channels, config, dtype=dtype)
        self.conv = _conv(in_channels, out_channels, 1, config, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        x = self.conv(nnx.relu(self.norm(x)))
        return nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


def transition_block(
    in_channels: int, out_channels: int, config: DenseNetConfig, *, dtype=jnp.float32, rngs
) -> _Transition:
    """Between dense blocks: BN, ReLU, 1x1 conv (compression), 2x2/2 average pool (floor)."""
    return _Transition(in_channels, out_channels, config, dtype=dtype, rngs=rngs)


class _Bottleneck(nnx.Module):
    def __init__(self, in_channels, growth_rate, config, *, dtype, rngs):
        mid = config.bn_size * growth_rate
        self.norm1 = batch_norm(in_channels, config, dtype=dtype)
        self.conv1 = _conv(in_channels, mid, 1, config, dtype=dtype, rngs=rngs)
        self.norm2 = batch_norm(mid, config, dtype=dtype)
        self.conv2 = _conv(mid, growth_rate, 3, config, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        x = self.conv1(nnx.relu(self.norm1(x)))
        return self.conv2(nnx.relu(self.norm2(x)))


def bottleneck_block(
    in_channels: int, growth_rate: int, config: DenseNetConfig, *, dtype=jnp.float32, rngs
) -> _Bottleneck:
    """DenseNet-B layer: a 1x1 conv to bn_size * k channels before the 3x3 conv."""
    return _Bottleneck(in_channels, growth_rate, config, dtype=dtype, rngs=rngs)
