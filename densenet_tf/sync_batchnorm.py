"""Synchronised BatchNorm for tf.distribute: train-mode statistics over every replica's shard.

The project's BatchNormalization (batchnorm.py) with its train mode reduced over the whole
global batch: per-channel sums, then squared deviations from the global mean, each all-reduced
with tf.distribute.get_replica_context().all_reduce, so the statistics are the one-device
ones (two passes, as tf.nn.moments and the oracle). TF differentiates all_reduce (the gradient
of an all-sum is an all-sum), so the backward is the whole batch's too: every replica receives
d(sum of the replicas' losses) / d(its own inputs and parameters).

Keras 3's own BatchNormalization(synchronized=True) (TensorFlow backend only) is not used: it
computes the variance in one pass, E[x^2] - E[x]^2 clamped at 0, which cancels badly where a
channel's mean is large against its spread, and it updates the running variance with the
biased rule only. The running statistics here follow `running_var` as batchnorm.py, with the
unbiased correction over the global count N * H * W (identical on every replica).

Outside a replica context (no strategy, or cross-replica code) it is batchnorm.py's layer.
"""

from __future__ import annotations

import tensorflow as tf

from densenet_spec.config import DenseNetConfig
from densenet_tf.batchnorm import BatchNormalization


class SyncBatchNormalization(BatchNormalization):
    """batchnorm.BatchNormalization whose train-mode statistics span all replicas in sync."""

    def call(self, inputs, training=None, mask=None):
        context = tf.distribute.get_replica_context()
        if not training or context is None or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        rank = len(inputs.shape)
        axes = [a for a in range(rank) if a != self.axis % rank]  # all but the channel axis
        local_sum = tf.reduce_sum(inputs, axis=axes)
        local_count = tf.cast(tf.size(inputs) // tf.size(local_sum), inputs.dtype)
        total, n = context.all_reduce(tf.distribute.ReduceOp.SUM, [local_sum, local_count])
        mean = total / n
        # Second pass, as tf.nn.moments: the gradient through the mean is zero over the whole
        # batch (the deviations sum to 0), so it is stopped here, and with it one all-reduce.
        squares = tf.reduce_sum(tf.math.squared_difference(inputs, tf.stop_gradient(mean)), axes)
        var = context.all_reduce(tf.distribute.ReduceOp.SUM, squares) / n
        m = 1.0 - self.momentum  # the weight of the new batch statistic
        running = var * (n / (n - 1.0)) if self.running_var == "unbiased" else var
        self.moving_mean.assign((1.0 - m) * self.moving_mean + m * mean)
        self.moving_variance.assign((1.0 - m) * self.moving_variance + m * running)
        return tf.nn.batch_normalization(inputs, mean, var, self.beta, self.gamma, self.epsilon)


def sync_batch_norm(
    num_features: int, config: DenseNetConfig, *, name: str = "norm"
) -> SyncBatchNormalization:
    """layers.batch_norm's settings on SyncBatchNormalization: DenseNet(norm_layer=...)."""
    norm = SyncBatchNormalization(
        epsilon=config.bn_eps,
        momentum=1.0 - config.bn_momentum,
        running_var=config.bn_running_var,
        name=name,
    )
    norm.build((None, None, None, num_features))
    return norm
