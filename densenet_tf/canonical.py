"""Canonical names and layout for the Keras model's variables (used by weights.py and train.py).

The canonical name is the path to the layer (`blocks.0.layers.1.norm1` is layer `norm1` of the
keras.Sequential model.blocks[0].layers[1]) plus a leaf, mapped by the small tables below.
Layout differs in two places only: conv OIHW <-> Keras HWIO, linear (out, in) <-> Keras (in, out).
"""

from __future__ import annotations

import keras
import numpy as np

from densenet_spec.params import param_specs

# canonical leaf -> Keras attribute, per layer type
BN_LEAVES = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}
CONV_LEAVES = {"weight": "kernel", "bias": "bias"}  # Conv2D and Dense

# Keras -> canonical layout, by rank: conv kernel HWIO -> OIHW, linear (in, out) -> (out, in).
TO_CANONICAL = {4: (3, 2, 0, 1), 2: (1, 0)}
FROM_CANONICAL = {4: (2, 3, 1, 0), 2: (1, 0)}


def named_variables(model: keras.Model) -> dict[str, keras.Variable]:
    """canonical name -> the Keras variable, in densenet_spec.params.param_specs order."""
    out = {}
    for spec in param_specs(model.config):
        path, leaf = spec.name.rsplit(".", 1)
        layer = layer_at(model, path)
        table = BN_LEAVES if isinstance(layer, keras.layers.BatchNormalization) else CONV_LEAVES
        out[spec.name] = getattr(layer, table[leaf])
    return out


def layer_at(model: keras.Model, path: str) -> keras.Layer:
    """The layer at a canonical path: `blocks.0.layers.1.norm1` is
    model.blocks[0].layers[1].get_layer("norm1")."""
    layer = model
    for part in path.split("."):
        if part.isdigit():
            layer = layer[int(part)]
        elif isinstance(layer, keras.Sequential):
            layer = layer.get_layer(part)
        else:
            layer = getattr(layer, part)
    return layer


def to_canonical_array(value: np.ndarray) -> np.ndarray:
    axes = TO_CANONICAL.get(value.ndim)
    return value if axes is None else np.ascontiguousarray(value.transpose(axes))


def from_canonical_array(value: np.ndarray) -> np.ndarray:
    axes = FROM_CANONICAL.get(value.ndim)
    return value if axes is None else np.ascontiguousarray(value.transpose(axes))
