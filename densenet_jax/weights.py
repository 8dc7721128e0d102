"""Canonical weights (densenet_spec.params: PyTorch names and layout) in and out of the NNX model.

The canonical name `blocks.0.layers.1.norm1.weight` is the NNX path
('blocks', 0, 'layers', 1, 'norm1', 'scale'): the module path is the same, only the leaf name
and, for kernels, the layout differ.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from densenet_spec import weightfile
from densenet_spec.params import ParamSpec, param_specs

# ParamSpec.kind -> (NNX leaf, axes taking the canonical layout to the NNX layout)
LEAVES = {
    "conv_weight": ("kernel", (2, 3, 1, 0)),  # OIHW -> HWIO
    "conv_bias": ("bias", None),
    "bn_weight": ("scale", None),
    "bn_bias": ("bias", None),
    "bn_running_mean": ("mean", None),
    "bn_running_var": ("var", None),
    "fc_weight": ("kernel", (1, 0)),  # (out, in) -> (in, out)
    "fc_bias": ("bias", None),
}


def _nnx_path(spec: ParamSpec) -> tuple:
    *modules, _ = spec.name.split(".")
    leaf, _ = LEAVES[spec.kind]
    return tuple(int(p) if p.isdigit() else p for p in modules) + (leaf,)


def _to_canonical_layout(spec: ParamSpec, value) -> np.ndarray:
    _, axes = LEAVES[spec.kind]
    value = np.asarray(value)
    return np.ascontiguousarray(value if axes is None else value.transpose(np.argsort(axes)))


def to_canonical(model: nnx.Module, grads: nnx.State | None = None) -> dict[str, np.ndarray]:
    """Every parameter and running statistic, canonical names and layout, in forward order.

    Given `grads` (gradients with respect to the model's Params, as nnx.grad returns them), the
    gradient of every trainable tensor instead, under the same names and in the same layout.
    """
    specs = param_specs(model.config)
    if grads is None:
        state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    else:
        state, specs = grads, [s for s in specs if s.trainable]
    flat = dict(nnx.to_flat_state(state))
    if len(flat) != len(specs):
        raise AssertionError(f"NNX state has {len(flat)} tensors, the spec names {len(specs)}")
    return {s.name: _to_canonical_layout(s, flat[_nnx_path(s)][...]) for s in specs}


def from_canonical(model: nnx.Module, tensors: dict[str, np.ndarray]) -> None:
    """Validate (WeightKeysError, WeightDtypeError), then copy every tensor into the model."""
    weightfile.check_tensors(tensors, model.config, model.dtype.name)
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))))
    specs = param_specs(model.config)
    if len(flat) != len(specs):
        raise AssertionError(f"model has {len(flat)} tensors, the spec names {len(specs)}")
    for s in specs:
        _, axes = LEAVES[s.kind]
        value = np.asarray(tensors[s.name])
        value = value if axes is None else value.transpose(axes)
        variable = flat[_nnx_path(s)]
        if value.shape != variable.shape:
            raise AssertionError(f"{s.name}: {value.shape} does not fit {variable.shape}")
        variable.set_value(jnp.asarray(value))  # also fills a model built by nnx.eval_shape


def save_weights(model: nnx.Module, path: str | os.PathLike) -> None:
    weightfile.save_weights(path, to_canonical(model), model.config)


def load_weights(model: nnx.Module, path: str | os.PathLike) -> None:
    tensors, _ = weightfile.load_weights(path, model.config, model.dtype.name)
    from_canonical(model, tensors)
