"""The spec's BatchNorm for NNX: torch's running-statistics rule, which nnx.BatchNorm cannot follow.

nnx.BatchNorm updates the running variance with the biased batch variance; torch (and the spec by
default) uses the unbiased one, n / (n - 1) times larger. Everything else is nnx.BatchNorm's
behaviour and naming (scale, bias, mean, var; `momentum` weighs the old running value;
`use_running_average` is switched by `.train()` / `.eval()`), so a model's `norm_layer` can be
either class. Forward- and reverse-mode differentiable. With `record_output` set, its output is
sown as an nnx.Intermediate named "output" for nnx.capture (the adapter's float32 pieces).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class BatchNorm(nnx.Module):
    """Normalise over every axis but the last (N, H, W in NHWC) with batch or running statistics."""

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float = 0.99,
        epsilon: float = 1e-5,
        unbiased_running_var: bool = True,
        use_running_average: bool = False,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs | None = None,  # unused; accepted as nnx.BatchNorm accepts it
    ):
        self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), param_dtype))
        self.var = nnx.BatchStat(jnp.ones((num_features,), param_dtype))
        self.momentum = momentum
        self.epsilon = epsilon
        self.unbiased_running_var = unbiased_running_var
        self.use_running_average = use_running_average
        self.dtype = dtype
        self.record_output = False  # set by the parity adapter (set_attributes)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.dtype is not None:
            x = x.astype(self.dtype)
        if self.use_running_average:
            y = self.normalize(x, self.mean[...], self.var[...])
        else:
            mean, var = self.batch_statistics(x)
            self.update_running_statistics(mean, var, count=x.size // x.shape[-1])
            y = self.normalize(x, mean, var)
        if self.record_output:  # under nnx.capture(..., nnx.Intermediate): the parity pieces
            self.sow(nnx.Intermediate, "output", y)
        return y

    def batch_statistics(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per-channel mean and biased variance (two passes: mean, then squared deviations)."""
        axes = tuple(range(x.ndim - 1))
        return jnp.mean(x, axes), jnp.var(x, axes)

    def update_running_statistics(self, mean: jax.Array, var: jax.Array, count: int) -> None:
        """running = momentum * running + (1 - momentum) * batch, with the unbiased variance
        (count / (count - 1) times the biased one) unless asked for the biased one."""
        if self.unbiased_running_var:
            var = var * (count / (count - 1))
        m = self.momentum
        # The running statistics are state, not a function of the parameters: no gradient.
        self.mean[...] = m * self.mean[...] + (1.0 - m) * jax.lax.stop_gradient(mean)
        self.var[...] = m * self.var[...] + (1.0 - m) * jax.lax.stop_gradient(var)

    def normalize(self, x: jax.Array, mean: jax.Array, var: jax.Array) -> jax.Array:
        """(x - mean) / sqrt(var + eps) * scale + bias."""
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
