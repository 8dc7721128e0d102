"""DenseNet (Huang et al. 2017) in Flax NNX, assembled from a DenseNetConfig alone. NHWC inside."""

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from densenet_jax.inputs import check_input
from densenet_jax.layers import DenseBlock, Layer, batch_norm, transition_block
from densenet_spec.config import DenseNetConfig, check_float_dtype


class DenseNet(nnx.Module):
    """Stem, dense blocks with transitions between them, head (BN, ReLU, global pool, linear).

    Runs in `dtype` (float64 needs jax_enable_x64) and starts in train mode, as a torch module.
    norm_layer(num_features, config, dtype=...), conv_layer (nnx.Conv's arguments), dense_block
    (DenseBlock's) and max_pool (nnx.max_pool's) build the parts; variants.py injects others.
    """

    def __init__(
        self,
        config: DenseNetConfig,
        *,
        dtype=jnp.float32,
        rngs: nnx.Rngs | None = None,
        norm_layer: Layer = batch_norm,
        conv_layer: Layer = nnx.Conv,
        dense_block: Layer = DenseBlock,
        max_pool: Callable = nnx.max_pool,
    ):
        check_float_dtype(dtype, "model")  # DTypeError before any weight is drawn
        if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
            raise ValueError('float64 needs jax.config.update("jax_enable_x64", True) first')
        self.config = c = config
        self.dtype = jnp.dtype(dtype)
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        norm_layer = partial(norm_layer, dtype=dtype)
        conv_layer = partial(conv_layer, dtype=dtype, param_dtype=dtype, rngs=rngs)
        layers = {"norm_layer": norm_layer, "conv_layer": conv_layer}
        init, bias = c.num_init_features, c.conv_bias
        if c.stem == "imagenet":  # parity: explicit symmetric padding (3), never 'SAME'
            conv = conv_layer(c.in_channels, init, (7, 7), strides=2, padding=3, use_bias=bias)
            self.stem = _Stem(conv, norm_layer(init, c), max_pool)
        else:  # "cifar"
            self.stem = _Stem(conv_layer(c.in_channels, init, (3, 3), padding=1, use_bias=bias))

        block_in = c.block_in_channels()
        blocks, transitions = [], []
        for i, num_layers in enumerate(c.block_config):
            blocks.append(dense_block(num_layers, block_in[i], c.growth_rate, c, **layers))
            if i < len(c.block_config) - 1:
                channels = block_in[i] + num_layers * c.growth_rate
                out = c.transition_out_channels(channels)
                transitions.append(transition_block(channels, out, c, **layers))
        self.blocks, self.transitions = nnx.List(blocks), nnx.List(transitions)

        self.head = _Head(
            norm_layer(c.num_features, c),  # final batch norm
            nnx.Linear(c.num_features, c.num_classes, dtype=dtype, param_dtype=dtype, rngs=rngs),
        )
        self.use_running_average = False  # set by .train() / .eval(), as on every BatchNorm

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(self, x)  # named errors for a wrong type, dtype or shape
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        return self.head(x)

    def stage_outputs(self, x: jax.Array) -> dict[str, jax.Array]:
        """Every stage's output keyed by densenet_spec.params.stage_names, in forward order."""
        check_input(self, x)  # named errors for a wrong type, dtype or shape
        stages = {}
        x = stages["stem"] = self.stem(x)
        for i, block in enumerate(self.blocks):
            layer_outputs = {}
            x = block(x, layer_outputs)
            stages.update({f"blocks.{i}.{k}": y for k, y in layer_outputs.items()})
            stages[f"blocks.{i}"] = x
            if i < len(self.transitions):
                x = stages[f"transitions.{i}"] = self.transitions[i](x)
        x = stages["head"] = self.head.pool(x)
        stages["logits"] = self.head.fc(x)
        return stages


class _Stem(nnx.Module):
    def __init__(self, conv: nnx.Module, norm: nnx.Module | None = None, max_pool=None):
        self.conv, self.norm, self.max_pool = conv, norm, max_pool

    def __call__(self, x):
        x = self.conv(x)
        if self.norm is not None:  # ImageNet stem: BN, ReLU, 3x3/2 max-pool
            x = nnx.relu(self.norm(x))
            # parity: explicit pad 1 (with -inf, max_pool's init value); 'SAME' would pad (0, 1)
            x = self.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return x


class _Head(nnx.Module):
    def __init__(self, norm: nnx.Module, fc: nnx.Module):
        self.norm, self.fc = norm, fc

    def pool(self, x):
        """BN, ReLU, global average pool: the pooled (N, C)."""
        return nnx.relu(self.norm(x)).mean(axis=(1, 2))

    def __call__(self, x):
        return self.fc(self.pool(x))
