"""parity: Keras's SGD made the spec's, for a changing learning rate and float64 weights.

The spec's rule keeps the rate outside the momentum buffer:

    buf = momentum * buf + (g + wd * p);   p -= lr * buf

keras.optimizers.SGD keeps it inside: v = momentum * v - lr * g; p += v. At a constant rate the
two are the same update with v = -lr * buf. When the rate changes from lr_old to lr_new, Keras's
next step computes momentum * (-lr_old * buf) - lr_new * d, the spec's -lr_new * (momentum * buf
+ d): they differ unless the slot is first scaled by lr_new / lr_old, and a rate of 0 would lose
the buffer. SpecSGD's slot holds the spec's buffer itself and its update_step is the spec's
arithmetic (the oracle's order of operations): the same number of operations as Keras's, so
there is no fast path to keep (unlike MXNet's fused kernel, densenet_mx/sgd.py). The momentum
buffers read and write directly (buffer()), in the spec's terms, at any rate.

The rate is a float64 tf.Variable: Keras turns a float rate into a floatx (float32) variable,
which rounds a float64 run's rate; a float32 run casts it once per step (as Keras does).
`optimizer.learning_rate = lr` sets it (Keras's way; tf.function steps read the variable, so a
new rate needs no retrace). The coupled weight decay (wd * p) is added by train.py's step.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops


class SpecSGD(keras.optimizers.SGD):
    """keras.optimizers.SGD with the spec's momentum buffer and a float64 learning rate."""

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0, **kwargs):
        # parity: NumPy float64 keeps the momentum exact for float64 weights (Keras casts a
        # Python float through float32: tf.cast(0.9, float64) = 0.8999999762).
        super().__init__(learning_rate=lambda: self.rate, momentum=np.float64(momentum), **kwargs)
        self.rate = tf.Variable(np.float64(learning_rate), trainable=False, name="learning_rate")

    @property
    def learning_rate(self) -> tf.Variable:
        return self.rate

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self.rate.assign(np.float64(value))

    def build(self, variables) -> None:
        """One buffer per trainable variable, zeros, also at momentum 0 (buf = d then)."""
        if self.built:
            return
        keras.optimizers.Optimizer.build(self, variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def buffer(self, variable) -> keras.Variable:
        """The spec's momentum buffer of a trainable variable (Keras's subclassing pattern, the
        index Keras keeps per variable)."""
        return self.momentums[self._get_variable_index(variable)]

    def update_step(self, gradient, variable, learning_rate) -> None:
        lr = ops.cast(learning_rate, variable.dtype)
        d = ops.cast(gradient, variable.dtype)
        buf = self.buffer(variable)
        momentum = ops.cast(self.momentum, variable.dtype)
        self.assign(buf, ops.add(ops.multiply(momentum, buf), d))
        self.assign_sub(variable, ops.multiply(lr, buf))

    def get_config(self) -> dict:
        return {**super().get_config(), "learning_rate": float(self.rate.numpy())}
