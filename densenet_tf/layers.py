"""DenseNet building blocks (d2l chapter 8.7 names) as Keras 3 layers, NHWC (channels last).

Each block is a keras.Sequential of named layers (norm, relu, conv, ...), built at construction
from the explicit channel counts the config gives, so its weights exist before the first call.
Layers take their dtype from Keras's global dtype policy (variants.make_model sets it).
"""

import keras

from densenet_spec.config import DenseNetConfig
from densenet_tf.batchnorm import BatchNormalization

CHANNEL_AXIS = -1  # NHWC


def batch_norm(
    num_features: int, config: DenseNetConfig, *, name: str = "norm"
) -> keras.layers.BatchNormalization:
    """BatchNormalization set to the spec (Keras differs in eps, momentum and the running var)."""
    norm = BatchNormalization(
        epsilon=config.bn_eps,  # parity: Keras's default is 1e-3
        momentum=1.0 - config.bn_momentum,  # parity: Keras's momentum weighs the old value
        running_var=config.bn_running_var,  # parity: Keras's own rule is "biased"
        name=name,
    )
    norm.build((None, None, None, num_features))
    return norm


def conv_block(
    in_channels: int, out_channels: int, config: DenseNetConfig, *, norm_layer=batch_norm
) -> keras.Sequential:
    """d2l's conv_block: BN, ReLU, 3x3 conv (pad 1 keeps the spatial size for concatenation)."""
    return _sequential(
        "conv_block",
        in_channels,
        norm_layer(in_channels, config),
        keras.layers.ReLU(name="relu"),
        # 'same' at stride 1 pads 1 on every side, as the spec
        keras.layers.Conv2D(
            out_channels, 3, padding="same", use_bias=config.conv_bias, name="conv"
        ),
    )


class DenseBlock(keras.layers.Layer):
    """Dense connectivity: each layer sees the concatenation of all earlier feature maps."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        config: DenseNetConfig,
        *,
        norm_layer=batch_norm,
    ):
        super().__init__(name="dense_block")
        layer = conv_block if config.bn_size is None else bottleneck_block
        self.layers = [
            layer(in_channels + j * growth_rate, growth_rate, config, norm_layer=norm_layer)
            for j in range(num_layers)
        ]
        self.built = True

    def call(self, x, training=False):
        for layer in self.layers:
            y = layer(x, training=training)
            x = keras.ops.concatenate([x, y], axis=CHANNEL_AXIS)
        return x


def transition_block(
    in_channels: int, out_channels: int, config: DenseNetConfig, *, norm_layer=batch_norm
) -> keras.Sequential:
    """BN, ReLU, 1x1 conv, 2x2/2 average pool (floor): halves height and width."""
    return _sequential(
        "transition_block",
        in_channels,
        norm_layer(in_channels, config),
        keras.layers.ReLU(name="relu"),
        keras.layers.Conv2D(out_channels, 1, use_bias=config.conv_bias, name="conv"),
        keras.layers.AveragePooling2D(2, strides=2, name="pool"),
    )


def bottleneck_block(
    in_channels: int, growth_rate: int, config: DenseNetConfig, *, norm_layer=batch_norm
) -> keras.Sequential:
    """DenseNet-B layer: BN, ReLU, 1x1 conv to bn_size * k, BN, ReLU, 3x3 conv pad 1 to k."""
    mid = config.bn_size * growth_rate
    return _sequential(
        "bottleneck_block",
        in_channels,
        norm_layer(in_channels, config, name="norm1"),
        keras.layers.ReLU(name="relu1"),
        keras.layers.Conv2D(mid, 1, use_bias=config.conv_bias, name="conv1"),
        norm_layer(mid, config, name="norm2"),
        keras.layers.ReLU(name="relu2"),
        keras.layers.Conv2D(
            growth_rate, 3, padding="same", use_bias=config.conv_bias, name="conv2"
        ),  # pad 1
    )


def _sequential(name, in_channels, *layers) -> keras.Sequential:
    """The layers in order, built (weights created) for any image size with in_channels channels."""
    block = keras.Sequential(layers, name=name)
    block.build((None, None, None, in_channels))
    return block
