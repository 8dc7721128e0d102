"""DenseNet (Huang et al. 2017) in Flax NNX, assembled from a DenseNetConfig only. NHWC inside."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from densenet_jax.layers import DenseBlock, batch_norm, transition_block
from densenet_spec.config import DenseNetConfig, check_input_shape


def _window_views(xp, window: int, stride: int, out_hw) -> list:
    """The strided views of xp at each window offset (di, dj), in row-major window order:
    view k [:, i, j] is element k of output (i, j)'s window."""
    n, _, _, c = xp.shape
    ho, wo = out_hw
    views = []
    for di in range(window):
        for dj in range(window):
            end = (n, di + stride * (ho - 1) + 1, dj + stride * (wo - 1) + 1, c)
            views.append(jax.lax.slice(xp, (0, di, dj, 0), end, (1, stride, stride, 1)))
    return views


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window: int, stride: int, padding: int):
    """window x window max-pool over H, W (NHWC), padded with -inf (padding never wins).

    The same forward as nnx.max_pool. Backward routes each gradient to the first maximum of its
    window in row-major order (the spec's rule, torch's) with elementwise ops only; JAX's own
    max-pool gradient (select-and-scatter) costs XLA's CPU backend a variadic reduce-window over
    four int32 index arrays in forward and a scatter in backward (measured, BN, ReLU and this
    pool at DenseNet-121's stem size, batch 8, one thread: 190 ms forward and backward with
    nnx.max_pool, 60 ms with this).
    """
    pads = ((padding, padding), (padding, padding))
    return nnx.max_pool(x, (window, window), (stride, stride), pads)


def _max_pool_forward(x, window, stride, padding):
    y = _max_pool(x, window, stride, padding)
    return y, (x, y)


def _max_pool_backward(window, stride, padding, kept, g):
    x, y = kept
    p, s = padding, stride
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-jnp.inf)
    views = _window_views(xp, window, s, y.shape[1:3])
    # The first k whose element is the maximum (NaN: propagated, as argmax does). A reduction,
    # so XLA computes it once; as a chain of selects it is fused into every use and recomputed.
    first = jnp.argmax(jnp.stack([(v == y) | jnp.isnan(v) for v in views]), axis=0)
    # g arrives as a fused expression (block 1's concatenation gradients summed), which XLA's
    # CPU fusion would recompute inside each of the up to 9 terms below that read it (measured:
    # the step's slowest op). A divide is "expensive" to its fusion heuristics and is not
    # duplicated, so dividing by ones it cannot fold (argmax >= 0) materialises g once.
    g = g / (first >= 0).astype(g.dtype)
    zero = jnp.zeros_like(g)
    # Window offset (di, dj) sends output (i, j)'s gradient to padded input (s i + di, s j + dj).
    # Gathered per phase (r % s, c % s) of the padded input, each term is a plain shift of an
    # output-sized array (no strided scatter), summed in k order as the spec sums them.
    n, ho, wo, c = g.shape
    rows, cols = -(-xp.shape[1] // s), -(-xp.shape[2] // s)
    phases = []
    for pr in range(s):
        row = []
        for pc in range(s):
            total = jnp.zeros((n, rows, cols, c), g.dtype)
            for di in range(pr, window, s):
                for dj in range(pc, window, s):
                    t, u = di // s, dj // s
                    routed = jnp.where(first == di * window + dj, g, zero)
                    shifted = ((0, 0, 0), (t, rows - t - ho, 0), (u, cols - u - wo, 0), (0, 0, 0))
                    total = total + jax.lax.pad(routed, jnp.zeros((), g.dtype), shifted)
            row.append(total)
        phases.append(jnp.stack(row, axis=3))  # (n, rows, cols, s, c)
    gxp = jnp.stack(phases, axis=2).reshape(n, rows * s, cols * s, c)  # interleave the phases
    return (gxp[:, p : p + x.shape[1], p : p + x.shape[2], :],)


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)


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
            x = _max_pool(x, 3, 2, 1)  # nnx.max_pool's forward, a faster backward
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
