"""DenseNet (Huang et al. 2017) as a subclassed keras.Model, assembled from the config alone."""

from __future__ import annotations

import keras

from densenet_spec.config import DenseNetConfig, check_input_shape
from densenet_spec.params import stage_names
from densenet_tf.layers import (
    DenseBlock,
    _conv2d,
    _dtype_policy,
    _Sequential,
    batch_norm,
    transition_block,
)


class DenseNet(keras.Model):
    """Stem, dense blocks joined by transitions, head (BN, ReLU, global average pool, linear).

    dtype: "float32" or "float64"; every layer, weight and running statistic uses it.
    Input and features are NHWC; weights.py converts to the canonical (NCHW/OIHW) layout.
    """

    def __init__(
        self, config: DenseNetConfig, memory_efficient: bool = False, dtype: str = "float32"
    ):
        super().__init__(dtype=dtype, name="densenet")
        self.config = config
        c = config
        with _dtype_policy(dtype):
            if c.stem == "imagenet":
                self.stem = _Sequential(
                    "stem",
                    # parity: explicit pad 3 then 'valid'; 'same' would pad (2, 3) at stride 2
                    # (d2l's TF tab does) and shift every output.
                    pad=keras.layers.ZeroPadding2D(3),
                    conv=_conv2d(c.in_channels, c.num_init_features, 7, c, stride=2),
                    norm=batch_norm(c.num_init_features, c),
                    relu=keras.layers.ReLU(),
                    # parity: the spec pads the max-pool with -inf. Zeros give the same maxima
                    # because the input is post-ReLU (>= 0) and every 3x3/2 window holds at least
                    # one real pixel; gradients agree too, as a tie at 0 lies where ReLU's
                    # gradient is 0 anyway. Pad 1 explicitly, never 'same'.
                    pool_pad=keras.layers.ZeroPadding2D(1),
                    pool=keras.layers.MaxPooling2D(3, strides=2, padding="valid"),
                )
            else:  # cifar: a single 3x3 conv, no BN in the stem
                self.stem = _Sequential(
                    "stem",
                    conv=_conv2d(c.in_channels, c.num_init_features, 3, c, padding="same"),
                )
            self.blocks, self.transitions = [], []
            for i, (num_layers, channels) in enumerate(zip(c.block_config, c.block_in_channels())):
                self.blocks.append(
                    DenseBlock(num_layers, channels, c.growth_rate, c, memory_efficient)
                )
                if i < len(c.block_config) - 1:
                    channels += num_layers * c.growth_rate
                    out = c.transition_out_channels(channels)
                    self.transitions.append(transition_block(channels, out, c))
            fc = keras.layers.Dense(c.num_classes)
            fc.build((None, c.num_features))
            self.head = _Sequential(
                "head",
                norm=batch_norm(c.num_features, c),  # Final batch norm
                relu=keras.layers.ReLU(),
                pool=keras.layers.GlobalAveragePooling2D(),
                fc=fc,
            )
        self.memory_efficient = memory_efficient
        self.built = True

    def call(self, x, training=False):
        return self._forward(x, training, None)

    def forward_features(self, x, training=False) -> dict:
        """Every stage's output keyed by densenet_spec.params.stage_names, NHWC."""
        features: dict = {}
        self._forward(x, training, features)
        return {name: features[name] for name in stage_names(self.config)}

    def _forward(self, x, training, features):
        check_input_shape(self.config, x.shape, "NHWC", training=bool(training))
        x = self.stem(x, training=training)
        _record(features, "stem", x)
        for i, block in enumerate(self.blocks):
            layers = {} if features is not None else None
            x = block(x, training=training, features=layers)
            for name, y in (layers or {}).items():
                _record(features, f"blocks.{i}.{name}", y)
            _record(features, f"blocks.{i}", x)
            if i < len(self.transitions):
                x = self.transitions[i](x, training=training)
                _record(features, f"transitions.{i}", x)
        x = self.head.relu(self.head.norm(x, training=training))
        pooled = self.head.pool(x)
        _record(features, "head", pooled)
        logits = self.head.fc(pooled)
        _record(features, "logits", logits)
        return logits


def _record(features: dict | None, name: str, value) -> None:
    if features is not None:
        features[name] = value
