"""DenseNet (Huang et al. 2017) as a subclassed keras.Model, assembled from the config alone."""

import keras

from densenet_spec.config import DenseNetConfig, check_float_dtype
from densenet_tf.inputs import check_input
from densenet_tf.layers import CHANNEL_AXIS, DenseBlock, batch_norm, transition_block
from densenet_tf.max_pool import NaNMaxPooling2D


class DenseNet(keras.Model):
    """Stem, dense blocks joined by transitions, head (BN, ReLU, global average pool, linear).

    norm_layer(num_features, config, *, name): builds each BatchNorm (layers.batch_norm);
    dense_block: the DenseBlock class (memory_efficient.MemoryEfficientDenseBlock recomputes).
    max_pool_layer: the stem's max-pool (default max_pool.NaNMaxPooling2D: NaN propagates).
    Input and outputs are NHWC; weights.py converts to the canonical (NCHW/OIHW) layout.
    """

    def __init__(
        self,
        config: DenseNetConfig,
        *,
        norm_layer=batch_norm,
        dense_block=DenseBlock,
        max_pool_layer=NaNMaxPooling2D,
    ):
        super().__init__(name="densenet")
        check_float_dtype(self.dtype_policy.variable_dtype, "model")  # before any weight exists
        self.config = c = config
        if c.stem == "imagenet":
            stem = [
                # parity: explicit pad 3 then 'valid', as keras.applications: 'same' pads (2, 3)
                keras.layers.ZeroPadding2D(3, name="pad"),
                keras.layers.Conv2D(
                    c.num_init_features, 7, strides=2, use_bias=c.conv_bias, name="conv"
                ),
                norm_layer(c.num_init_features, c),
                keras.layers.ReLU(name="relu"),
                # parity: zeros, not the spec's -inf: the same maxima after ReLU (>= 0); pad 1
                keras.layers.ZeroPadding2D(1, name="pool_pad"),
                # parity: Keras's max-pool skips NaN; the spec's propagates it (max_pool.py)
                max_pool_layer(3, strides=2, name="pool"),
            ]
        else:  # cifar: a single 3x3 conv, no BN in the stem
            stem = [
                # 'same' at stride 1 pads 1 on every side, as the spec
                keras.layers.Conv2D(
                    c.num_init_features, 3, padding="same", use_bias=c.conv_bias, name="conv"
                )
            ]
        self.stem = keras.Sequential(stem, name="stem")
        self.stem.build((None, None, None, c.in_channels))
        self.blocks, self.transitions = [], []
        for i, (num_layers, channels) in enumerate(zip(c.block_config, c.block_in_channels())):
            self.blocks.append(
                dense_block(num_layers, channels, c.growth_rate, c, norm_layer=norm_layer)
            )
            if i < len(c.block_config) - 1:
                channels += num_layers * c.growth_rate
                out = c.transition_out_channels(channels)
                self.transitions.append(transition_block(channels, out, c, norm_layer=norm_layer))
        self.head = keras.Sequential(
            [
                norm_layer(c.num_features, c),  # Final batch norm
                keras.layers.ReLU(name="relu"),
                keras.layers.GlobalAveragePooling2D(name="pool"),
                keras.layers.Dense(c.num_classes, name="fc"),
            ],
            name="head",
        )
        self.head.build((None, None, None, c.num_features))

    def call(self, x, training=False):
        return self.stage_outputs(x, training)["logits"]

    def stage_outputs(self, x, training=False) -> dict:
        """Every stage's output keyed by densenet_spec.params.stage_names, NHWC."""
        check_input(self, x, training)  # named errors for a wrong dtype or shape
        out = {"stem": self.stem(x, training=training)}
        x = out["stem"]
        k = self.config.growth_rate
        for i, block in enumerate(self.blocks):
            width, x = x.shape[CHANNEL_AXIS], block(x, training=training)
            for j in range(len(block.layers)):  # layer j's output: its k channels of the concat
                out[f"blocks.{i}.layers.{j}"] = x[..., width + j * k : width + (j + 1) * k]
            out[f"blocks.{i}"] = x
            if i < len(self.transitions):
                x = out[f"transitions.{i}"] = self.transitions[i](x, training=training)
        norm, relu, pool, fc = self.head.layers
        out["head"] = pool(relu(norm(x, training=training)))
        out["logits"] = fc(out["head"])
        return out
