"""DenseNet building blocks as Keras 3 layers, NHWC (channels last).

Every layer is built at construction from the explicit channel counts the config gives, so its
weights exist before the first call. Layers take their dtype from Keras's global dtype policy;
DenseNet(dtype=...) sets it while it builds (see _dtype_policy).
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from densenet_spec.config import DenseNetConfig

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"densenet_tf needs Keras's TensorFlow backend, Keras runs {keras.backend.backend()!r}: "
        "set KERAS_BACKEND=tensorflow before keras is first imported"
    )

CHANNEL_AXIS = -1  # NHWC


class _BatchNorm(keras.layers.Layer):
    """BatchNorm to the spec (keras.layers.BatchNormalization differs in three defaults).

    gamma, beta are trainable; moving_mean, moving_variance are the running statistics.
    Train mode normalises with the batch mean and the biased batch variance, then updates
    running = (1 - momentum) * running + momentum * batch, momentum = config.bn_momentum.
    Arithmetic runs in the layer's dtype (float64 under a float64 policy).
    """

    def __init__(self, num_features: int, config: DenseNetConfig):
        super().__init__(name="batch_norm")
        self.num_features = num_features
        self.epsilon = config.bn_eps  # parity: Keras's default is 1e-3, the spec's 1e-5
        # parity: the weight of the new batch statistic (torch's convention); Keras's momentum
        # is the weight of the old running value, 1 - this (its default 0.99 = spec 0.01).
        self.momentum = config.bn_momentum
        # parity: Keras updates moving_variance with the biased batch variance; the spec's
        # default ("unbiased") uses batch variance * n / (n - 1), n = N * H * W, as torch does.
        self.unbiased = config.bn_running_var == "unbiased"
        shape = (num_features,)
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(
            shape=shape, initializer="zeros", trainable=False, name="moving_mean"
        )
        self.moving_variance = self.add_weight(
            shape=shape, initializer="ones", trainable=False, name="moving_variance"
        )
        self.built = True

    def call(self, x, training=False):
        if training:
            # Two-pass biased variance, as tf.nn.moments: the gradient through the mean inside
            # the square is exactly 0 (d var / d mean = -2 mean(x - mean)), so it is not traced.
            mean, var = tf.nn.moments(x, axes=[0, 1, 2])
            if not _running_stats_frozen:
                running_var = var
                if self.unbiased:
                    n = tf.cast(tf.size(x) // self.num_features, x.dtype)
                    running_var = var * (n / (n - 1.0))
                m = self.momentum
                self.moving_mean.assign((1.0 - m) * self.moving_mean + m * mean)
                self.moving_variance.assign((1.0 - m) * self.moving_variance + m * running_var)
        else:
            mean, var = self.moving_mean, self.moving_variance
        # One scale and one shift per channel: two full-size ops (and tensors kept for backward)
        # instead of four for (x - mean) * rsqrt(var + eps) * gamma + beta.
        scale = self.gamma * tf.math.rsqrt(var + self.epsilon)
        shift = self.beta - mean * scale
        return x * scale + shift


class _Sequential(keras.layers.Layer):
    """Children run in the order given; each is an attribute under its canonical name."""

    def __init__(self, name: str, **children: keras.layers.Layer):
        super().__init__(name=name)
        self.order = list(children)
        for name, child in children.items():
            setattr(self, name, child)
        self.built = True

    def call(self, x, training=False):
        return self.run(self.order, x, training)

    def run(self, names, x, training):
        """The named children only, in the given order (memory-efficient blocks split a layer)."""
        for name in names:
            x = getattr(self, name)(x, training=training)  # Keras passes training where accepted
        return x


def _conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    config: DenseNetConfig,
    stride: int = 1,
    padding: str = "valid",
):
    """A conv built for in_channels.

    parity: 'same' only at stride 1, where it pads (k - 1) / 2 on every side, as the spec;
    at stride 2 it pads unevenly, so the strided stem pads with a layer before a 'valid' conv.
    """
    if padding == "same" and stride != 1:
        raise ValueError("'same' padding differs from the spec's at stride > 1: pad explicitly")
    conv = keras.layers.Conv2D(
        out_channels, kernel_size, strides=stride, padding=padding, use_bias=config.conv_bias
    )
    conv.build((None, None, None, in_channels))
    return conv


def batch_norm(num_features: int, config: DenseNetConfig) -> keras.Layer:
    """The spec's BatchNorm (eps, momentum convention, running-variance rule from the config)."""
    return _BatchNorm(num_features, config)


def conv_block(in_channels: int, out_channels: int, config: DenseNetConfig) -> keras.Layer:
    """d2l's conv_block: BN, ReLU, 3x3 conv pad 1."""
    return _Sequential(
        "conv_block",
        norm=batch_norm(in_channels, config),
        relu=keras.layers.ReLU(),
        conv=_conv2d(in_channels, out_channels, 3, config, padding="same"),  # pad 1
    )


class DenseBlock(keras.layers.Layer):
    """Dense connectivity: layer j sees the concatenation of the block input and all earlier y.

    memory_efficient: backward recomputes the layers from the block output (_recomputed_block)
    instead of keeping every concatenation; the numbers are the same up to rounding.
    """

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        config: DenseNetConfig,
        memory_efficient: bool = False,
    ):
        super().__init__(name="dense_block")
        make = conv_block if config.bn_size is None else bottleneck_block
        self.layers = [
            make(in_channels + j * growth_rate, growth_rate, config) for j in range(num_layers)
        ]
        self.memory_efficient = memory_efficient
        # Keras copies dict arguments while casting tensors in them; `features` must stay the
        # caller's dict so this block can fill it.
        self._convert_input_args = False
        self.built = True

    def call(self, x, training=False, features=None):
        if self.memory_efficient:
            return _recomputed_block(self.layers, x, training, features)
        inputs = [x]  # the block input, then each layer's output y
        for j, layer in enumerate(self.layers):
            y = layer(tf.concat(inputs, axis=CHANNEL_AXIS), training=training)
            if features is not None:
                features[f"layers.{j}"] = y
            inputs.append(y)
        return tf.concat(inputs, axis=CHANNEL_AXIS)


def transition_block(in_channels: int, out_channels: int, config: DenseNetConfig) -> keras.Layer:
    """BN, ReLU, 1x1 conv, 2x2/2 average pool (floor): halves height and width."""
    return _Sequential(
        "transition_block",
        norm=batch_norm(in_channels, config),
        relu=keras.layers.ReLU(),
        conv=_conv2d(in_channels, out_channels, 1, config),
        pool=keras.layers.AveragePooling2D(2, strides=2, padding="valid"),
    )


def bottleneck_block(in_channels: int, growth_rate: int, config: DenseNetConfig) -> keras.Layer:
    """DenseNet-B layer: BN, ReLU, 1x1 conv to bn_size * k, BN, ReLU, 3x3 conv pad 1 to k."""
    mid = config.bn_size * growth_rate
    return _Sequential(
        "bottleneck_block",
        norm1=batch_norm(in_channels, config),
        relu1=keras.layers.ReLU(),
        conv1=_conv2d(in_channels, mid, 1, config),
        norm2=batch_norm(mid, config),
        relu2=keras.layers.ReLU(),
        conv2=_conv2d(mid, growth_rate, 3, config, padding="same"),  # pad 1
    )


# Memory-efficient dense blocks: backward recomputes each dense layer; the recomputation must not
# update the running statistics (the forward run already did).
_running_stats_frozen = False


@contextlib.contextmanager
def _frozen_running_stats():
    global _running_stats_frozen
    previous, _running_stats_frozen = _running_stats_frozen, True
    try:
        yield
    finally:
        _running_stats_frozen = previous


def _recomputed_block(layers, x, training, features):
    """The dense block under one tf.custom_gradient that keeps the block output, not each layer's
    concatenation and activations.

    Layer j's input is the first w_j channels of the block output, so backward slices it off
    again and reruns the layer, running statistics frozen, on local tapes. Its input gradient
    joins one running gradient of that slice: TF's own backward of the concatenations would hold
    one gradient per (layer, earlier feature map) until their AddN, quadratic in depth. The
    saving is for tf.function: eagerly, tf.custom_gradient leaves the forward on the tape too.

    A layer splits as torch's memory-efficient DenseNet does: norm, relu, conv (the 1x1 conv of
    a bottleneck layer, or the whole conv_block) and the rest. Where the layer's input is at least
    twice as wide as that conv's output, the output is kept: recomputing the conv would then be
    the costly part (the deep blocks; DenseNet-201 steps +20% -> +12%), and what is kept is freed
    before backward reaches the first, widest-resolution block, where the peak is.
    """

    @tf.custom_gradient
    def block(x):
        inputs, saved = [x], []
        for j, layer in enumerate(layers):
            h = tf.concat(inputs, axis=CHANNEL_AXIS)
            first, rest = layer.order[:3], layer.order[3:]
            z = layer.run(first, h, training)
            y = layer.run(rest, z, training)
            keep = bool(rest) and h.shape[CHANNEL_AXIS] >= 2 * z.shape[CHANNEL_AXIS]
            saved.append((h.shape[CHANNEL_AXIS], first, rest, z if keep else None))
            if features is not None:
                features[f"layers.{j}"] = y
            inputs.append(y)
        out = tf.concat(inputs, axis=CHANNEL_AXIS)

        def grad(g, variables=()):
            grads = {}  # variable ref -> gradient
            for layer, (width, first, rest, z) in zip(reversed(layers), reversed(saved)):
                # tf.function runs an op as soon as its inputs are ready: without these control
                # edges every recomputation would run at once, and the weight gradients last,
                # keeping all the recomputed activations alive together.
                with tf.control_dependencies([g]):
                    h = out[..., :width]
                g, dy = g[..., :width], g[..., width:]
                with _frozen_running_stats():
                    with tf.GradientTape() as tape1:
                        tape1.watch(h)
                        z_again = layer.run(first, h, training)  # z kept: its conv is pruned
                    z = z_again if z is None else z
                    with tf.GradientTape() as tape2:
                        tape2.watch(z)
                        y = layer.run(rest, z, training)
                w2 = tape2.watched_variables()
                dz, *dw2 = tape2.gradient(y, [z, *w2], output_gradients=dy)
                w1 = tape1.watched_variables()
                dh, *dw1 = tape1.gradient(z_again, [h, *w1], output_gradients=dz)
                with tf.control_dependencies(dw1 + dw2):
                    g = g + dh
                grads.update((v.ref(), d) for v, d in zip(w1 + w2, dw1 + dw2))
            # None for the running statistics, which eval mode reads
            return g, [grads.get(v.ref()) for v in variables]

        return out, grad

    return block(x)


@contextlib.contextmanager
def _dtype_policy(dtype: str):
    """Build layers in `dtype`: Keras layers take the global dtype policy at construction."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
