"""Canonical weights (PyTorch layout, densenet_spec.params names) in and out of the Keras model.

canonical.py walks the model to each layer by its canonical path and transposes where the layout
differs (conv OIHW <-> Keras HWIO, linear (out, in) <-> Keras (in, out)).
"""

from __future__ import annotations

import os

import keras
import numpy as np

from densenet_spec import weightfile
from densenet_tf.canonical import from_canonical_array, named_variables, to_canonical_array


def to_canonical(model: keras.Model) -> dict[str, np.ndarray]:
    """Every parameter and running statistic, canonical name -> numpy array (canonical layout)."""
    return {name: to_canonical_array(v.numpy()) for name, v in named_variables(model).items()}


def from_canonical(model: keras.Model, tensors: dict) -> None:
    """Validate (names, shapes, dtype: named errors), then copy every tensor into the model."""
    weightfile.check_tensors(tensors, model.config, model.dtype_policy.variable_dtype)
    variables = named_variables(model)
    for name, variable in variables.items():
        value = from_canonical_array(np.asarray(tensors[name]))
        assert tuple(value.shape) == tuple(variable.shape), (name, value.shape, variable.shape)
        variable.assign(value)
    # Never leave a variable of the model uninitialised: the table must cover all of them.
    covered = {id(v) for v in variables.values()}
    assert all(id(v) in covered for v in model.weights), "a model variable has no canonical name"


def save_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Write the model's canonical weights to a safetensors file (densenet_spec.weightfile)."""
    weightfile.save_weights(path, to_canonical(model), model.config)


def load_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Read a weight file written for the same config and dtype into the model."""
    tensors, _ = weightfile.load_weights(path, model.config, model.dtype_policy.variable_dtype)
    from_canonical(model, tensors)
