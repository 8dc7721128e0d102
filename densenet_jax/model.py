"""DenseNet (Huang et al. 2017) in Flax NNX, assembled from a DenseNetConfig only. NHWC inside."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from densenet_jax.layers import DenseBlock, batch_norm, max_pool, transition_block
from densenet_spec.config import DenseNetConfig, check_input_shape


class _Stem(nnx.Module):
    def __init__(self, config: DenseNetConfig, *, dtype, rngs: nnx.Rngs):
        c, bias = config, config.conv_bias
        kernel, stride, pad = (7, 2, 3) if c.stem == "imagenet" else (3, 1, 1)
        # parity: explicit symmetric padding (3 for 7x7/2). 'SAME' would pad (2, 3) on even
        # image sizes and change every output (the d2l chapter's JAX tab does that).
        self.conv = nnx.Conv(
            c.in_channels,
            c.num_init_features,
            kernel_size=(kernel, kernel),
            strides=(stride, stride),
            padding=((pad, pad), (pad, pad)),
            use_bias=bias,
            dtype=dtype,
            param_dtype=dtype,
            rngs=rngs,
        )
        self.imagenet = c.stem == "imagenet"
        self.norm = batch_norm(c.num_init_features, c, dtype=dtype) if self.imagenet else None

    def __call__(self, x):
        x = self.conv(x)
        if self.imagenet:
            x = nnx.relu(self.norm(x))
            # parity: explicit pad 1 (with -inf, max_pool's init value); 'SAME' would pad (0, 1).
            x = max_pool(x, 3, 2, 1)  # nnx.max_pool's forward, a faster backward (layers.py)
        return x


class _Head(nnx.Module):
    def __init__(self, config: DenseNetConfig, *, dtype, rngs: nnx.Rngs):
        self.norm = batch_norm(config.num_features, config, dtype=dtype)  # final batch norm
        self.fc = nnx.Linear(
            config.num_features, config.num_classes, dtype=dtype, param_dtype=dtype, rngs=rngs
        )

    def pool(self, x):
        """norm, relu, global average pool: the pooled (N, C)."""
        return nnx.relu(self.norm(x)).mean(axis=(1, 2))

    def __call__(self, x):
        return self.fc(self.pool(x))


class DenseNet(nnx.Module):
    """Stem, dense blocks joined by transitions, head (BN, ReLU, global pool, linear).

    Runs in `dtype` (float32 or float64; float64 needs jax_enable_x64). Starts in train mode,
    as a torch module does; `.eval()` switches every BatchNorm to its running statistics.
    """

    def __init__(
        self,
        config: DenseNetConfig,
        memory_efficient: bool = False,
        *,
        dtype=jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
            raise ValueError('float64 needs jax.config.update("jax_enable_x64", True) first')
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        c = config
        self.config = c
        self.dtype = jnp.dtype(dtype)
        self.stem = _Stem(c, dtype=dtype, rngs=rngs)
        block_in = c.block_in_channels()
        blocks, transitions = [], []
        for i, num_layers in enumerate(c.block_config):
            blocks.append(
                DenseBlock(num_layers, block_in[i], c.growth_rate, c, memory_efficient,
                           dtype=dtype, rngs=rngs)
            )
            if i < len(c.block_config) - 1:
                channels = block_in[i] + num_layers * c.growth_rate
                transitions.append(
                    transition_block(
                        channels, c.transition_out_channels(channels), c, dtype=dtype, rngs=rngs
                    )
                )
        self.blocks = nnx.List(blocks)
        self.transitions = nnx.List(transitions)
        self.head = _Head(c, dtype=dtype, rngs=rngs)
        self.use_running_average = False  # set by .train() / .eval(), as on every BatchNorm

    def __call__(self, x):
        check_input_shape(self.config, x.shape, "NHWC", training=not self.use_running_average)
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        return self.head(x)

    def forward_features(self, x) -> dict:
        """Every stage's output keyed by densenet_spec.params.stage_names, in forward order."""
        check_input_shape(self.config, x.shape, "NHWC", training=not self.use_running_average)
        features = {}
        x = features["stem"] = self.stem(x)
        for i, block in enumerate(self.blocks):
            layer_features = {}
            x = block(x, layer_features)
            features.update({f"blocks.{i}.{k}": y for k, y in layer_features.items()})
            features[f"blocks.{i}"] = x
            if i < len(self.transitions):
                x = features[f"transitions.{i}"] = self.transitions[i](x)
        x = features["head"] = self.head.pool(x)
        features["logits"] = self.head.fc(x)
        return features
