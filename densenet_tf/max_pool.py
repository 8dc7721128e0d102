"""parity: a max-pool that propagates NaN, as the spec's oracle, torch and JAX do.

TensorFlow's MaxPool kernel (Eigen's, and XLA's reduce-window) keeps a window's maximum with a
comparison that is false for NaN, so a NaN is skipped: an image with a NaN pixel gave finite
logits through the ImageNet stem's max-pool. NaNMaxPooling2D (injected into DenseNet by default,
model.py's `max_pool_layer`) pools a 0/1 mask of the NaN entries too and puts NaN in every
window that holds one:

    y = where(max_pool(isnan(x)) > 0, NaN, max_pool(x))

Everywhere else the value is Keras's own max-pool's, bit for bit (a select copies it), and so
is the gradient (the select passes the incoming gradient through unchanged where it kept the
pool's value; the mask has no gradient). Cost: one more pool over the mask and a select.
"""

from __future__ import annotations

import keras
from keras import ops


class NaNMaxPooling2D(keras.layers.MaxPooling2D):
    """keras.layers.MaxPooling2D (same arguments) whose window maximum is NaN when the window
    holds a NaN."""

    def call(self, inputs):
        y = super().call(inputs)
        has_nan = super().call(ops.cast(ops.isnan(inputs), inputs.dtype))  # 1 where a NaN is
        return ops.where(has_nan > 0, ops.cast(float("nan"), y.dtype), y)
