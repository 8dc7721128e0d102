"""Canonical weights in and out of the PyTorch DenseNet.

torch's layout is the canonical one (conv OIHW, linear (out, in)) and the module tree is built
with the canonical names, so nothing is transposed or renamed: the table below is the identity,
kept explicit so it reads side by side with the JAX/TF/MXNet tables. num_batches_tracked is a
torch-only counter (used only when momentum is None, never here) and is not canonical.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from densenet_spec import weightfile
from densenet_spec.params import param_specs

# canonical leaf -> torch attribute
_LEAVES = {
    "weight": "weight",  # conv OIHW, linear (out, in), BN gamma
    "bias": "bias",  # conv, linear, BN beta
    "running_mean": "running_mean",
    "running_var": "running_var",
}


def _dtype_name(model: nn.Module) -> str:
    dtypes = {t.dtype for t in model.state_dict().values() if t.is_floating_point()}
    if len(dtypes) != 1:
        raise ValueError(f"model tensors have mixed dtypes {sorted(map(str, dtypes))}")
    return str(dtypes.pop()).removeprefix("torch.")


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """canonical name -> the model's own tensor, walking the spec's table of names."""
    out = {}
    for spec in param_specs(model.config):
        module_name, leaf = spec.name.rsplit(".", 1)
        out[spec.name] = getattr(model.get_submodule(module_name), _LEAVES[leaf])
    return out


def to_canonical(model: nn.Module) -> dict[str, np.ndarray]:
    """Every parameter and running statistic, canonical name -> numpy array (a copy)."""
    return {
        name: t.detach().cpu().contiguous().numpy().copy() for name, t in _tensors(model).items()
    }


def from_canonical(model: nn.Module, tensors: dict) -> None:
    """Copy canonical tensors into the model after validating names, shapes and dtype."""
    weightfile.check_tensors(tensors, model.config, _dtype_name(model))
    with torch.no_grad():
        for name, target in _tensors(model).items():
            target.copy_(torch.from_numpy(np.ascontiguousarray(tensors[name])))


def save_weights(model: nn.Module, path) -> None:
    weightfile.save_weights(path, to_canonical(model), model.config)


def load_weights(model: nn.Module, path) -> None:
    tensors, _ = weightfile.load_weights(path, model.config, _dtype_name(model))
    from_canonical(model, tensors)
