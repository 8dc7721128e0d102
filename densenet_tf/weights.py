"""Canonical weights (PyTorch layout, densenet_spec.params names) in and out of the Keras model.

The canonical name is the path to the layer (`blocks.0.layers.1.norm1` is
model.blocks[0].layers[1].norm1) plus a leaf, mapped by the small tables below. Layout differs
in two places only: conv OIHW <-> Keras HWIO, linear (out, in) <-> Keras (in, out).
"""

from __future__ import annotations

import keras
import numpy as np

from densenet_spec import weightfile
from densenet_spec.params import param_specs

# canonical leaf -> Keras attribute, per layer type
_BN_LEAVES = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}
_CONV_LEAVES = {"weight": "kernel", "bias": "bias"}  # Conv2D and Dense

# Keras -> canonical layout, by rank: conv kernel HWIO -> OIHW, linear (in, out) -> (out, in).
_TO_CANONICAL = {4: (3, 2, 0, 1), 2: (1, 0)}
_FROM_CANONICAL = {4: (2, 3, 1, 0), 2: (1, 0)}


def to_canonical(model) -> dict[str, np.ndarray]:
    """Every parameter and running statistic, canonical name -> numpy array (canonical layout)."""
    return {name: _to_canonical_array(v.numpy()) for name, v in _variables(model).items()}


def from_canonical(model, tensors: dict) -> None:
    """Validate (names, shapes, dtype: named errors), then copy every tensor into the model."""
    weightfile.check_tensors(tensors, model.config, model.dtype_policy.variable_dtype)
    variables = _variables(model)
    for name, variable in variables.items():
        value = _from_canonical_array(np.asarray(tensors[name]))
        assert tuple(value.shape) == tuple(variable.shape), (name, value.shape, variable.shape)
        variable.assign(value)
    # Never leave a variable of the model uninitialised: the table must cover all of them.
    covered = {id(v) for v in variables.values()}
    assert all(id(v) in covered for v in model.weights), "a model variable has no canonical name"


def save_weights(model, path) -> None:
    weightfile.save_weights(path, to_canonical(model), model.config)


def load_weights(model, path) -> None:
    tensors, _ = weightfile.load_weights(path, model.config, model.dtype_policy.variable_dtype)
    from_canonical(model, tensors)


def _variables(model) -> dict[str, keras.Variable]:
    """canonical name -> the Keras variable, in densenet_spec.params.param_specs order."""
    out = {}
    for spec in param_specs(model.config):
        path, leaf = spec.name.rsplit(".", 1)
        layer = model
        for part in path.split("."):
            layer = layer[int(part)] if part.isdigit() else getattr(layer, part)
        table = _BN_LEAVES if hasattr(layer, "moving_variance") else _CONV_LEAVES
        out[spec.name] = getattr(layer, table[leaf])
    return out


def _to_canonical_array(value: np.ndarray) -> np.ndarray:
    axes = _TO_CANONICAL.get(value.ndim)
    return value if axes is None else np.ascontiguousarray(value.transpose(axes))


def _from_canonical_array(value: np.ndarray) -> np.ndarray:
    axes = _FROM_CANONICAL.get(value.ndim)
    return value if axes is None else np.ascontiguousarray(value.transpose(axes))
