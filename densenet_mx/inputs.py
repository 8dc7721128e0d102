"""Named errors for a batch before MXNet sees it (issue 17): the spec's checks at MXNet's edge.

MXNet's own errors for these come late and name its internals ("In HybridBlock, there must be
one NDArray or one Symbol", "This layer requires uniform type ... at 'weight'"), and a train
step must refuse bad labels before its forward pass changes any running statistic: the
SoftmaxCrossEntropyLoss kernel would clip 7 -> 4 and -1 -> 0 and floor 1.5 -> 1 and train on it.
"""

from __future__ import annotations

import numpy as np
from mxnet import autograd, gluon, nd, sym

from densenet_spec import config as spec
from densenet_spec.errors import DTypeError, LabelError


def model_dtype(model: gluon.Block) -> str:
    """The dtype the model's parameters hold (DTypeError unless float32 or float64)."""
    return spec.check_float_dtype(np.dtype(model.head.fc.weight.dtype).name, "model")


def check_input(model: gluon.Block, x, training: bool | None = None) -> None:
    """A batch the model can run: an NCHW NDArray of the model's float dtype and a shape the
    network accepts (spec.check_input_shape; training=None reads autograd's mode). A Symbol
    (the model traced inside an outer hybridized block) is checked when it has values."""
    if isinstance(x, sym.Symbol):
        return
    if not isinstance(x, nd.NDArray):
        raise DTypeError(
            f"input must be an mxnet NDArray (NCHW), got {type(x).__module__}.{type(x).__name__}"
            "; convert with mxnet.nd.array(x) or densenet_mx.from_nchw(x)"
        )
    got = spec.check_float_dtype(np.dtype(x.dtype).name, "input")
    want = model_dtype(model)
    if got != want:
        raise DTypeError(f"input dtype {got} differs from the model's {want}; cast the input")
    training = autograd.is_training() if training is None else training
    spec.check_input_shape(model.config, x.shape, "NCHW", training=training)


def check_labels(model: gluon.Block, y, batch: int) -> None:
    """Integer class indices, one per image, in range (spec.check_labels, LabelError)."""
    if not isinstance(y, nd.NDArray):
        raise LabelError(
            f"labels must be an mxnet NDArray of integer class indices, got "
            f"{type(y).__module__}.{type(y).__name__}; convert with mxnet.nd.array(y, "
            "dtype='int64')"
        )
    spec.check_labels(model.config, y.asnumpy(), batch)  # NumPy: dtype and values as the spec


def check_batch(model: gluon.Block, x, y, training: bool) -> None:
    """check_input and check_labels: what a train step or a gradient call runs first."""
    check_input(model, x, training)
    check_labels(model, y, x.shape[0])
