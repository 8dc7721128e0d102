"""Kernels tuned for XLA's CPU backend: the fast variant injects them on CPU only.

Each computes the plain model's numbers (the harness proves it) and changes only what XLA:CPU
compiles: 1x1 convolutions as matrix products, the stem's max-pool backward without
select-and-scatter, a BatchNorm that keeps fewer full-size tensors for backward. Measurements:
/work/notes/jax.md (to be merged into docs/). The Conv and max_pool here are jax.custom_vjp
functions, so a model using them is differentiable in reverse mode only (jax.grad, jax.vjp), not
in forward mode (jax.jvp, jax.hessian); the plain model is both.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from densenet_jax import batchnorm, layers
from densenet_spec.config import DenseNetConfig


def fast_modules(platform: str) -> dict:
    """DenseNet's keyword arguments for the fast variant on `platform` ("cpu", "gpu", "tpu"):
    this module's kernels on "cpu", where they were tuned; nothing elsewhere (the plain model)."""
    if platform != "cpu":
        return {}
    return {"norm_layer": batch_norm, "conv_layer": Conv, "max_pool": max_pool}


class BatchNorm(batchnorm.BatchNorm):
    """batchnorm.BatchNorm normalising as one scale and one shift per channel: two full-size
    ops (and tensors kept for backward) instead of four for (x - mean) * rsqrt(var + eps) *
    scale + bias; the variance's gradient skips the mean inside the square (exactly 0)."""

    def batch_statistics(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axes)
        # d var / d mean = -2 mean(x - mean) = 0: that path is not traced.
        return mean, jnp.mean(jnp.square(x - jax.lax.stop_gradient(mean)), axes)

    def normalize(self, x: jax.Array, mean: jax.Array, var: jax.Array) -> jax.Array:
        scale = self.scale[...] * jax.lax.rsqrt(var + self.epsilon)
        shift = self.bias[...] - mean * scale
        return x * scale + shift


def batch_norm(num_features: int, config: DenseNetConfig, *, dtype=jnp.float32) -> BatchNorm:
    """layers.batch_norm (the spec's settings) building this module's BatchNorm."""
    return layers.batch_norm(num_features, config, dtype=dtype, cls=BatchNorm)


class Conv(nnx.Conv):
    """nnx.Conv (same kernel and bias Params) computing a 1x1, stride-1, unpadded convolution
    as one matrix product over the channel axis (channel_matmul); any other as nnx.Conv does.

    XLA:CPU computes the same numbers either way, but differentiates a convolution's kernel
    through transposed copies of its input and gradient; the product needs only the gradient
    transposed."""

    def __call__(self, x: jax.Array) -> jax.Array:
        pointwise = self.kernel_size == (1, 1) and self.strides in (1, (1, 1))
        unpadded = self.padding in (0, "VALID", ((0, 0), (0, 0)))
        if not (pointwise and unpadded):
            return super().__call__(x)
        y = channel_matmul(x, self.kernel[0, 0], self.precision)
        return y if self.bias is None else y + self.bias[...]


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def channel_matmul(x: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
    """x (..., in) times kernel (in, out) over the channel axis (reverse-mode AD only)."""
    return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


def _channel_matmul_forward(x, kernel, precision):
    return channel_matmul(x, kernel, precision), (x, kernel)


def _channel_matmul_backward(precision, kept, g):
    x, kernel = kept
    rows = tuple(range(x.ndim - 1))  # N, H, W
    grad_x = jax.lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)
    # The kernel gradient as g^T x (out, in), then transposed: XLA:CPU runs a product in that
    # operand order with YNNPACK; x^T g, the order autodiff writes (and XLA's simplifier
    # restores unless the barrier stops it), runs as a slower Eigen product.
    grad_kernel_t = jax.lax.dot_general(g, x, ((rows, rows), ((), ())), precision=precision)
    return grad_x, jax.lax.optimization_barrier(grad_kernel_t).T


channel_matmul.defvjp(_channel_matmul_forward, _channel_matmul_backward)


def max_pool(x: jax.Array, window_shape, strides, padding) -> jax.Array:
    """nnx.max_pool's forward for a square window and stride with symmetric padding (NHWC,
    padded with -inf); its backward routes each gradient to the first maximum of its window in
    row-major order (the spec's rule, torch's) with elementwise ops only, where JAX's own
    (select-and-scatter) costs XLA:CPU a variadic reduce-window over index arrays and a scatter.
    Reverse-mode AD only."""
    (window, window_w), (stride, stride_w) = window_shape, strides
    (pad, pad_end), (pad_w, pad_w_end) = padding
    if not (window == window_w and stride == stride_w and pad == pad_end == pad_w == pad_w_end):
        return nnx.max_pool(x, window_shape, strides, padding)
    return _max_pool(x, window, stride, pad)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window: int, stride: int, padding: int):
    pads = ((padding, padding), (padding, padding))
    return nnx.max_pool(x, (window, window), (stride, stride), pads)


def _max_pool_forward(x, window, stride, padding):
    y = _max_pool(x, window, stride, padding)
    return y, (x, y)


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


def _max_pool_backward(window, stride, padding, kept, g):
    x, y = kept
    p, s = padding, stride
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-jnp.inf)
    views = _window_views(xp, window, s, y.shape[1:3])
    # The first k whose element is the maximum (NaN: propagated, as argmax does). A reduction,
    # so XLA computes it once; as a chain of selects it is fused into every use and recomputed.
    first = jnp.argmax(jnp.stack([(v == y) | jnp.isnan(v) for v in views]), axis=0)
    # g arrives as a fused expression (block 1's concatenation gradients summed), which XLA:CPU
    # fusion would recompute inside each of the up to 9 terms below that read it. A divide is
    # "expensive" to its fusion heuristics and is not duplicated, so dividing by ones it cannot
    # fold (argmax >= 0) materialises g once.
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
