"""keras.layers.BatchNormalization with the running-variance rule as a setting.

Keras updates moving_variance with the biased batch variance (divide by n). The spec's default,
as torch's, is the unbiased one (divide by n - 1, n = N * H * W per channel). Keras has no option
for it, so this subclass does the train-mode update itself; everything else (weights, eval mode,
epsilon, the momentum convention) is Keras's.
"""

from __future__ import annotations

import keras
import tensorflow as tf

RUNNING_VAR_RULES = ("unbiased", "biased")


class BatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization whose moving_variance follows `running_var`: "unbiased" (the spec's
    default: batch variance * n / (n - 1)) or "biased" (Keras's own rule).

    Train mode normalises with the batch mean and the biased batch variance either way.
    """

    def __init__(self, *, running_var: str = "unbiased", **kwargs):
        if running_var not in RUNNING_VAR_RULES:
            raise ValueError(f"running_var must be one of {RUNNING_VAR_RULES}, got {running_var!r}")
        super().__init__(**kwargs)
        self.running_var = running_var

    def call(self, inputs, training=None, mask=None):
        if not (training and self.running_var == "unbiased"):
            return super().call(inputs, training=training, mask=mask)
        rank = len(inputs.shape)
        axes = [a for a in range(rank) if a != self.axis % rank]  # all but the channel axis
        # Two-pass biased variance (tf.nn.moments, as Keras's own train mode).
        mean, var = tf.nn.moments(inputs, axes=axes)
        n = tf.cast(tf.size(inputs) // tf.size(mean), inputs.dtype)
        m = 1.0 - self.momentum  # the weight of the new batch statistic
        self.moving_mean.assign((1.0 - m) * self.moving_mean + m * mean)
        self.moving_variance.assign((1.0 - m) * self.moving_variance + m * var * (n / (n - 1.0)))
        return tf.nn.batch_normalization(inputs, mean, var, self.beta, self.gamma, self.epsilon)

    def get_config(self) -> dict:
        return {**super().get_config(), "running_var": self.running_var}
