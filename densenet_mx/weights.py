"""Canonical weights in and out of the MXNet Gluon DenseNet.

Gluon's layouts are the canonical ones (Conv2D weight OIHW, Dense weight (out, in)), so nothing
is transposed. Only BatchNorm's leaves have other names: gamma, beta (running_mean, running_var
are the same). The module tree is built with the canonical names, so the table below is all the
renaming there is. Gluon's own parameter names ("densenet0_conv0_weight") are never used.
"""

from __future__ import annotations

import numpy as np
from mxnet import gluon, nd

from densenet_spec import weightfile
from densenet_spec.params import param_specs

# canonical leaf -> Gluon parameter attribute, for BatchNorm; conv and dense use the same names
_BN_LEAVES = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "running_mean",
    "running_var": "running_var",
}


def _block(model: gluon.Block, path: str) -> gluon.Block:
    """model.blocks[0].layers[1].norm1 for "blocks.0.layers.1.norm1"."""
    block = model
    for part in path.split("."):
        block = block[int(part)] if part.isdigit() else getattr(block, part)
    return block


def _parameters(model: gluon.Block) -> dict[str, gluon.Parameter]:
    """canonical name -> the model's own Parameter, walking the spec's table of names."""
    out = {}
    for spec in param_specs(model.config):
        block_path, leaf = spec.name.rsplit(".", 1)
        block = _block(model, block_path)
        attr = _BN_LEAVES[leaf] if isinstance(block, gluon.nn.BatchNorm) else leaf
        param = getattr(block, attr)
        if param.shape != spec.shape:
            raise AssertionError(f"{spec.name}: model has shape {param.shape}, spec {spec.shape}")
        out[spec.name] = param
    n_model = len(model.collect_params().keys())
    if n_model != len(out):
        raise AssertionError(f"model has {n_model} parameters, the spec's table {len(out)}")
    return out


def _dtype_name(model: gluon.Block) -> str:
    dtypes = {np.dtype(p.dtype).name for p in model.collect_params().values()}
    if len(dtypes) != 1:
        raise ValueError(f"model parameters have mixed dtypes {sorted(dtypes)}")
    return dtypes.pop()


def to_canonical(model: gluon.Block) -> dict[str, np.ndarray]:
    """Every parameter and running statistic, canonical name -> numpy array (a copy)."""
    return {name: p.data().asnumpy() for name, p in _parameters(model).items()}


def from_canonical(model: gluon.Block, tensors: dict) -> None:
    """Copy canonical tensors into the model after validating names, shapes and dtype."""
    weightfile.check_tensors(tensors, model.config, _dtype_name(model))
    for name, param in _parameters(model).items():
        t = np.ascontiguousarray(tensors[name])
        param.set_data(nd.array(t, ctx=param.list_ctx()[0], dtype=t.dtype))


def save_weights(model: gluon.Block, path) -> None:
    weightfile.save_weights(path, to_canonical(model), model.config)


def load_weights(model: gluon.Block, path) -> None:
    tensors, _ = weightfile.load_weights(path, model.config, _dtype_name(model))
    from_canonical(model, tensors)
