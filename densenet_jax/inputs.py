"""Named errors for a batch before JAX sees it (issue 17): the spec's checks at JAX's edge.

JAX promotes an integer or float64 batch silently (an int32 image through a float32 conv comes
out float32), and its cross-entropy takes any integer label: `take_along_axis` wraps -1 to the
last class and fills a label past the end with NaN. A train step must refuse bad labels before
its forward pass, which is also what moves the running statistics (and, donated, the buffers).
Inside a caller's jax.jit or jax.export the batch is a tracer: its dtype and shape (symbolic
dimensions included) are checked; label values are known only outside a trace.
"""

from __future__ import annotations

import jax
import numpy as np

from densenet_spec import config as spec
from densenet_spec.errors import DTypeError, LabelError


def model_dtype(model) -> str:
    """The dtype the model computes in (DTypeError unless float32 or float64)."""
    return spec.check_float_dtype(model.dtype, "model")


def check_input(model, x, training: bool | None = None) -> None:
    """A batch the model can run: an NHWC array (jax.Array, NumPy, a tracer) of the model's float
    dtype and a shape the network accepts (spec.check_input_shape; training=None reads the
    model's mode)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not hasattr(x, "shape"):
        raise DTypeError(
            f"input must be a jax.Array or NumPy array (NHWC), got "
            f"{type(x).__module__}.{type(x).__name__}; convert with densenet_jax.from_nchw(x)"
        )
    want = model_dtype(model)
    got = spec.check_float_dtype(dtype, "input")
    if got != want:
        raise DTypeError(f"input dtype {got} differs from the model's {want}; cast the input")
    training = not model.use_running_average if training is None else training
    spec.check_input_shape(model.config, x.shape, "NHWC", training=training)


def check_labels(model, y, batch) -> None:
    """Integer class indices, one per image, in range (spec.check_labels, LabelError). A traced
    label array (inside the caller's jit) is checked on a stand-in of zeros of its dtype and
    shape: its values are unknown until it runs."""
    if getattr(y, "dtype", None) is None or not hasattr(y, "shape"):
        raise LabelError(
            f"labels must be a jax.Array or NumPy array of integer class indices, got "
            f"{type(y).__module__}.{type(y).__name__}"
        )
    batch = _known(batch)
    if isinstance(y, jax.core.Tracer) or any(_known(d) is None for d in y.shape):
        dims = [_known(d) for d in y.shape]
        if batch is None:
            batch = dims[0] if dims and dims[0] is not None else 1
        y = np.zeros([batch if d is None else d for d in dims], np.dtype(y.dtype))
    elif batch is None:  # a symbolic batch of images with concrete labels
        batch = y.shape[0] if len(y.shape) else 1
    spec.check_labels(model.config, y, batch)


def check_batch(model, x, y, training: bool) -> None:
    """check_input and check_labels: what a train step or a gradient call runs first."""
    check_input(model, x, training)
    check_labels(model, y, x.shape[0])


def _known(d):
    """An int dimension, or None for a symbolic one (jax.export)."""
    try:
        return int(d)
    except Exception:  # jax.export's symbolic dimension: no value yet
        return None
