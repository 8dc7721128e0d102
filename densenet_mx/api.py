"""The small API every densenet_* package shares (the same names in all four):

    model = from_preset("d2l")                    # or from_file("weights.safetensors")
    load(model, "weights.safetensors")
    logits = predict(model, from_nchw(images))    # images: NumPy, NCHW

MXNet's layout is NCHW (LAYOUT), so from_nchw only wraps the array in an NDArray. Models from
from_preset and from_file come initialized (ready to load weights) and hybridized: predict runs
one cached graph, MXNet's compiled path.
"""

from __future__ import annotations

import os

import mxnet as mx
import numpy as np
from mxnet import autograd, nd

from densenet_mx.inputs import check_input
from densenet_mx.model import DenseNet
from densenet_mx.variants import make_model
from densenet_mx.weights import from_canonical, load_weights, save_weights
from densenet_spec import weightfile
from densenet_spec.config import check_float_dtype, get_preset

LAYOUT = "NCHW"


def from_preset(
    name: str,
    *,
    variant: str = "plain",
    memory_efficient: bool = False,
    dtype: str = "float32",
    ctx: mx.Context | None = None,
    **overrides,
) -> DenseNet:
    """The preset's DenseNet (config fields replaced by `overrides`), initialized on ctx
    (default CPU) in dtype and hybridized: ready to load weights and predict."""
    config = get_preset(name).replace(**overrides)
    return _ready(make_model(config, variant, memory_efficient, ctx=ctx, dtype=dtype), variant)


def from_file(
    path: str | os.PathLike,
    *,
    variant: str = "plain",
    dtype: str | None = None,
    ctx: mx.Context | None = None,
) -> DenseNet:
    """A DenseNet built from the config stored in a weight file, with its weights loaded.

    dtype defaults to the file's; another float dtype converts the weights."""
    tensors, config = weightfile.load_weights(path)  # validated: names, shapes, values
    dtype = check_float_dtype(dtype or next(iter(tensors.values())).dtype, "model")
    model = make_model(config, variant, ctx=ctx, dtype=dtype)
    from_canonical(model, {k: np.asarray(v, dtype) for k, v in tensors.items()})
    return _ready(model, variant)


def save(model: DenseNet, path: str | os.PathLike) -> None:
    """Write the model's canonical weights (running statistics included) to a weight file."""
    save_weights(model, path)


def load(model: DenseNet, path: str | os.PathLike) -> None:
    """Load a weight file written for this config and dtype into the model."""
    load_weights(model, path)


def predict(model: DenseNet, x: nd.NDArray) -> nd.NDArray:
    """Logits in eval mode for an NCHW batch; autograd's recording and train mode are left as
    they were (Gluon keeps the mode in autograd, not in the model)."""
    check_input(model, x, training=False)
    with autograd.pause(train_mode=False):
        return model(x)


def from_nchw(x: np.ndarray, *, ctx: mx.Context | None = None) -> nd.NDArray:
    """An NCHW NumPy batch as an NDArray on ctx (default CPU), its dtype kept."""
    x = np.asarray(x)
    return nd.array(x, ctx=ctx or mx.cpu(), dtype=x.dtype)


def _ready(model: DenseNet, variant: str) -> DenseNet:
    """Hybridized: the fast variant is already (static graph); plain gets Gluon's default."""
    if variant == "plain":
        model.hybridize()
    return model
