"""Canonical weights in and out of the MXNet Gluon DenseNet.

Gluon's layouts are the canonical ones (Conv2D weight OIHW, Dense weight (out, in)), so nothing
is transposed; canonical.parameters maps each canonical name to the model's own Parameter (only
BatchNorm's leaves are renamed: gamma, beta).
"""

from __future__ import annotations

import numpy as np
from mxnet import gluon, nd

from densenet_mx.canonical import parameters
from densenet_spec import weightfile


def to_canonical(model: gluon.Block) -> dict[str, np.ndarray]:
    """Every parameter and running statistic, canonical name -> numpy array (a copy)."""
    return {name: p.data().asnumpy() for name, p in parameters(model).items()}


def from_canonical(model: gluon.Block, tensors: dict) -> None:
    """Copy canonical tensors into the model after validating names, shapes and dtype."""
    weightfile.check_tensors(tensors, model.config, _dtype_name(model))
    for name, param in parameters(model).items():
        t = np.ascontiguousarray(tensors[name])
        param.set_data(nd.array(t, ctx=param.list_ctx()[0], dtype=t.dtype))


def save_weights(model: gluon.Block, path) -> None:
    weightfile.save_weights(path, to_canonical(model), model.config)


def load_weights(model: gluon.Block, path) -> None:
    tensors, _ = weightfile.load_weights(path, model.config, _dtype_name(model))
    from_canonical(model, tensors)


def _dtype_name(model: gluon.Block) -> str:
    dtypes = {np.dtype(p.dtype).name for p in model.collect_params().values()}
    if len(dtypes) != 1:
        raise ValueError(f"model parameters have mixed dtypes {sorted(dtypes)}")
    return dtypes.pop()
