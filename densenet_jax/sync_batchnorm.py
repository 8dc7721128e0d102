"""Synchronised BatchNorm for data parallelism under shard_map: statistics of the whole batch.

Each replica holds one shard; the batch mean and variance are per-channel sums all-reduced
(lax.psum) over the replica axis and divided by the global count, the variance from squared
deviations about that global mean (two passes, as batchnorm.BatchNorm). Not a mean of the
replicas' means (Flax's BatchNorm(axis_name=) averages those), equal only for equal shards.
The backward pass needs no code of its own: differentiating through a psum sums the cotangents
over the replicas, the all-reduce of sum(dy) and sum(dy * xhat) a hand-written backward does.
The running variance's unbiased correction uses the global count too.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from densenet_jax import batchnorm, layers
from densenet_spec.config import DenseNetConfig


class SyncBatchNorm(batchnorm.BatchNorm):
    """batchnorm.BatchNorm whose train-mode statistics span every replica on `axis_name`
    (call it inside shard_map, or any transformation that binds that axis name)."""

    def __init__(self, num_features: int, *, axis_name: str = "data", **kwargs):
        super().__init__(num_features, **kwargs)
        self.axis_name = axis_name

    def batch_statistics(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        axes = tuple(range(x.ndim - 1))
        count = (x.size // x.shape[-1]) * jax.lax.axis_size(self.axis_name)
        mean = jax.lax.psum(jnp.sum(x, axes), self.axis_name) / count
        var = jax.lax.psum(jnp.sum(jnp.square(x - mean), axes), self.axis_name) / count
        return mean, var

    def update_running_statistics(self, mean: jax.Array, var: jax.Array, count: int) -> None:
        super().update_running_statistics(mean, var, count * jax.lax.axis_size(self.axis_name))


def sync_batch_norm(axis_name: str = "data"):
    """A DenseNet norm_layer (layers.batch_norm's settings) building SyncBatchNorm on axis_name."""

    def norm_layer(num_features: int, config: DenseNetConfig, *, dtype=jnp.float32):
        cls = partial(SyncBatchNorm, axis_name=axis_name)
        return layers.batch_norm(num_features, config, dtype=dtype, cls=cls)

    return norm_layer
