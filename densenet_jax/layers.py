"""DenseNet building blocks in Flax NNX (d2l chapter 8.7 names), channels last (NHWC).

Modules read like their PyTorch counterparts: explicit in/out channels, `.train()` / `.eval()`
switch every BatchNorm between batch statistics and running statistics.
"""

from __future__ import annotations

from functools import partial

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
            axes = (0, 1, 2)
            mean = jnp.mean(x, axes)
            # Two-pass biased variance, as tf.nn.moments: the gradient through the mean inside
            # the square is exactly 0 (d var / d mean = -2 mean(x - mean)), so it is not traced.
            var = jnp.mean(jnp.square(x - jax.lax.stop_gradient(mean)), axes)
            n = x.shape[0] * x.shape[1] * x.shape[2]
            running_var = var * (n / (n - 1)) if self.unbiased_running_var else var
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1.0 - m) * jax.lax.stop_gradient(mean)
            self.var[...] = m * self.var[...] + (1.0 - m) * jax.lax.stop_gradient(running_var)
        # One scale and one shift per channel: two full-size ops (and tensors kept for backward)
        # instead of four for (x - mean) * rsqrt(var + eps) * gamma + beta. Measured with the
        # variance above, a DenseNet-121 train step (224, batch 8) needs 966 MB of XLA temp
        # memory; 1439 MB as (x - mean) * scale + beta, 1976 MB with the former lines.
        scale = self.scale[...] * jax.lax.rsqrt(var + self.epsilon)
        shift = self.bias[...] - mean * scale
        return x * scale + shift


def batch_norm(num_features: int, config: DenseNetConfig, *, dtype=jnp.float32) -> _BatchNorm:
    """The spec's BatchNorm (eps, torch-convention momentum, unbiased running variance)."""
    return _BatchNorm(num_features, config, dtype=dtype)


class _PointwiseConv(nnx.Conv):
    """A 1x1, stride-1, unpadded nnx.Conv (same kernel and bias Params, (1, 1, in, out)) computed
    as one matrix product over the channel axis. XLA's CPU backend computes the same numbers
    either way, but differentiates a convolution's kernel through transposed copies of its
    input and gradient; the product needs only the gradient transposed (_channel_matmul's
    backward) (measured, one thread: 1x1 conv 256 -> 128 at 56x56, batch 8, forward and
    backward 130 ms as a convolution, 83 ms as a product with autodiff's backward; a
    DenseNet-121 train step 13% faster)."""

    def __call__(self, x):
        y = _channel_matmul(x, self.kernel[0, 0], self.precision)
        return y if self.bias is None else y + self.bias[...]


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _channel_matmul(x, kernel, precision):
    """x (..., in) times kernel (in, out) over the channel axis (reverse-mode AD only, as every
    jax.custom_vjp: docs/framework_differences.md)."""
    return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


def _channel_matmul_forward(x, kernel, precision):
    return _channel_matmul(x, kernel, precision), (x, kernel)


def _channel_matmul_backward(precision, kept, g):
    x, kernel = kept
    rows = tuple(range(x.ndim - 1))  # N, H, W
    grad_x = jax.lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)
    # The kernel gradient as g^T x (out, in), then transposed: XLA's CPU backend runs a product
    # in that operand order with YNNPACK; x^T g, the order autodiff writes (and XLA's simplifier
    # restores unless the barrier stops it), runs as a slower Eigen product (measured, one
    # thread, 1x1 conv 256 -> 128 at 56x56, batch 8, forward and backward: 103 ms against 90;
    # 1024 -> 128 at 14x14: 18 against 14).
    grad_kernel_t = jax.lax.dot_general(g, x, ((rows, rows), ((), ())), precision=precision)
    return grad_x, jax.lax.optimization_barrier(grad_kernel_t).T


_channel_matmul.defvjp(_channel_matmul_forward, _channel_matmul_backward)


def _conv(in_channels, out_channels, kernel_size, config, *, dtype, rngs, stride=1, padding=0):
    # parity: explicit symmetric padding. nnx.Conv defaults to 'SAME', which agrees for these
    # stride-1 convs but not for the stride-2 stem (model.py); no layer is left to the default.
    pointwise = kernel_size == 1 and stride == 1 and padding == 0
    return (_PointwiseConv if pointwise else nnx.Conv)(
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


def _concat_then_layer(graphdef, state, inputs):
    """The dense layer on the concatenation of `inputs`, as a pure function of the layer's state:
    its output and its BatchStats after the call (updated in train mode)."""
    layer = nnx.merge(graphdef, state)
    y = layer(jnp.concatenate(inputs, axis=CHANNEL_AXIS))
    return y, nnx.state(layer, nnx.BatchStat)


# Memory-efficient dense layers (torchvision's memory_efficient=True): forward keeps only the
# layer's state and the separate feature maps it reads (linear in depth); backward concatenates
# them and runs the layer again. Not nnx.remat / jax.checkpoint: they mark the recomputation
# with an optimization barrier, which XLA's CPU compiler removes first (cse_barrier_expander),
# and then nothing keeps the recomputation out of the forward pass (CSE, scheduling): measured
# before the BatchNorm change, the compiled temp memory of a DenseNet-121 train step (224,
# batch 8) was 1976 MB with remat and without, 648 MB with remat and that pass disabled.
@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recomputed_in_backward(graphdef, state, inputs):
    return _concat_then_layer(graphdef, state, inputs)


def _forward_keeping_inputs(graphdef, state, inputs):
    # The running statistics come out of this, the only forward run whose outputs are used, so
    # they are updated exactly once per step.
    return _concat_then_layer(graphdef, state, inputs), (state, inputs)


def _backward_recomputing(graphdef, kept, cotangents):
    state, inputs = kept
    # Make the recomputation read the incoming cotangent (x + 0 * one of its elements: the same
    # values; XLA never folds 0 * c for floats, c could be inf or NaN). XLA can then neither
    # CSE it with the forward pass nor schedule it before this layer's backward.
    zero = 0 * cotangents[0].reshape(-1)[0]
    inputs = tuple(x + zero.astype(x.dtype) for x in inputs)
    _, vjp = jax.vjp(partial(_concat_then_layer, graphdef), state, inputs)
    return vjp(cotangents)


_recomputed_in_backward.defvjp(_forward_keeping_inputs, _backward_recomputing)


def _layer_forward(layer, inputs):
    return layer(jnp.concatenate(inputs, axis=CHANNEL_AXIS))


def _layer_forward_recomputed(layer, inputs):
    graphdef, state = nnx.split(layer)
    y, batch_stats = _recomputed_in_backward(graphdef, state, tuple(inputs))
    nnx.update(layer, batch_stats)
    return y


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
        inputs = [x]  # the block input, then each layer's output y
        for j, layer in enumerate(self.layers):
            y = forward(layer, inputs)
            if features is not None:
                features[f"layers.{j}"] = y
            inputs.append(y)
        return jnp.concatenate(inputs, axis=CHANNEL_AXIS)


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
