"""The small API every densenet_* package shares (the same names in all four):

    model = from_preset("d2l")                    # or from_file("weights.safetensors")
    load(model, "weights.safetensors")
    logits = predict(model, from_nchw(images))    # images: NumPy, NCHW

TensorFlow's layout is NHWC (LAYOUT): from_nchw moves the channel axis last, once, at the edge.
predict runs the model's compiled eval step (tf.function; XLA where model.jit_compile says so).
Keras models have no train/eval state: the mode is the `training` argument of each call.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from densenet_spec import weightfile
from densenet_spec.config import check_float_dtype, get_preset
from densenet_spec.errors import InputShapeError
from densenet_tf.model import DenseNet
from densenet_tf.train import eval_step
from densenet_tf.variants import make_model
from densenet_tf.weights import from_canonical, load_weights, save_weights

LAYOUT = "NHWC"


def from_preset(
    name: str,
    *,
    variant: str = "plain",
    memory_efficient: bool = False,
    dtype: str = "float32",
    **overrides,
) -> DenseNet:
    """The preset's DenseNet (config fields replaced by `overrides`) in dtype; weights exist
    (Keras builds at construction), ready to load and predict. The device is TensorFlow's
    placement (`with tf.device(...)` around the call)."""
    config = get_preset(name).replace(**overrides)
    return make_model(config, variant, memory_efficient, dtype=dtype)


def from_file(
    path: str | os.PathLike, *, variant: str = "plain", dtype: str | None = None
) -> DenseNet:
    """A DenseNet built from the config stored in a weight file, with its weights loaded.

    dtype defaults to the file's; another float dtype converts the weights."""
    tensors, config = weightfile.load_weights(path)  # validated: names, shapes, values
    dtype = check_float_dtype(dtype or next(iter(tensors.values())).dtype, "model")
    model = make_model(config, variant, dtype=dtype)
    from_canonical(model, {k: np.asarray(v, dtype) for k, v in tensors.items()})
    return model


def save(model: DenseNet, path: str | os.PathLike) -> None:
    """Write the model's canonical weights (running statistics included) to a weight file."""
    save_weights(model, path)


def load(model: DenseNet, path: str | os.PathLike) -> None:
    """Load a weight file written for this config and dtype into the model."""
    load_weights(model, path)


def predict(model: DenseNet, x: tf.Tensor | np.ndarray) -> tf.Tensor:
    """Logits in eval mode (running statistics) for an NHWC batch, by the compiled eval step."""
    return eval_step(model, x)  # checks the batch first: named errors


def from_nchw(x: np.ndarray) -> tf.Tensor:
    """An NCHW NumPy batch as an NHWC tf.Tensor, its dtype kept."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise InputShapeError(f"from_nchw takes an NCHW batch (rank 4), got shape {x.shape}")
    return tf.constant(np.ascontiguousarray(np.moveaxis(x, 1, -1)))
