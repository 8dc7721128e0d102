"""Named errors for a batch before TensorFlow sees it (issue 17): the spec's checks at the edge.

Keras converts NumPy arrays and casts a float input to the model's dtype (its autocast), and
lets an integer, bool or complex input through to the convolution, which promotes it (complex
loses its imaginary part); the spec's answer is a DTypeError naming the input dtype. A train
step must refuse bad labels before its forward pass changes any running statistic:
TensorFlow's cross-entropy kernel raises on a label out of range only after the BatchNorms
have updated. And the compiled steps (tf.function) would report our own errors as an
autograph StagingError, so train.py runs these checks before calling them.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from densenet_spec import config as spec
from densenet_spec.errors import DTypeError, LabelError


def model_dtype(model: keras.Model) -> str:
    """The dtype the model's variables hold (DTypeError unless float32 or float64)."""
    return spec.check_float_dtype(model.dtype_policy.variable_dtype, "model")


def check_input(model: keras.Model, x, training: bool | None = False) -> None:
    """A batch the model can run: an NHWC tensor or array of a float dtype (Keras casts a float
    batch to the model's dtype, its autocast: model(x) does so before call() sees x, so
    every float dtype passes here too) and a shape the network accepts
    (spec.check_input_shape). A symbolic batch dimension (tf.function with an input_signature
    of batch None, a keras.Input) passes; an unknown rank is left to TensorFlow."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        raise DTypeError(
            f"input must be a tf.Tensor or NumPy array (NHWC), got "
            f"{type(x).__module__}.{type(x).__name__}; convert with densenet_tf.from_nchw(x)"
        )
    model_dtype(model)
    try:
        floating = tf.as_dtype(dtype).is_floating
    except TypeError:
        floating = False
    if not floating:  # a float batch Keras casts to the model's dtype; anything else is named
        spec.check_float_dtype(dtype, "input")
    shape = x.shape
    if isinstance(shape, tf.TensorShape) and shape.rank is None:
        return
    spec.check_input_shape(model.config, shape, "NHWC", training=bool(training))


def check_labels(model: keras.Model, y, batch: int | None) -> None:
    """Integer class indices, one per image, in range (spec.check_labels, LabelError).

    Eager tensors and NumPy arrays are checked in full. A symbolic tensor (a step traced inside
    the caller's own tf.function) has no values yet: its dtype and shape are checked, on a
    stand-in of zeros (a valid class) where unknown dimensions take the batch size."""
    if getattr(y, "dtype", None) is None:
        raise LabelError(
            f"labels must be a tf.Tensor or NumPy array of integer class indices, got "
            f"{type(y).__module__}.{type(y).__name__}"
        )
    if tf.is_symbolic_tensor(y):
        dims = y.shape.as_list() if y.shape.rank is not None else [batch]
        if batch is None:
            batch = dims[0] if dims and dims[0] is not None else 1
        y = np.zeros([batch if d is None else d for d in dims], y.dtype.as_numpy_dtype)
    elif batch is None:  # a symbolic batch of images with concrete labels
        batch = y.shape[0] if len(y.shape) else 1
    spec.check_labels(model.config, y, batch)


def check_batch(model: keras.Model, x, y, training: bool) -> None:
    """check_input and check_labels: what a train step or a gradient call runs first."""
    check_input(model, x, training)
    check_labels(model, y, x.shape[0])
