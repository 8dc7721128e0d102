"""The canonical parameter names of densenet_spec.params, read off the Gluon model.

Gluon's layouts are the canonical ones (Conv2D weight OIHW, Dense weight (out, in)) and the module
tree is built with the canonical names, so the only renaming is BatchNorm's leaves (gamma, beta).
Used by weights.py (canonical weights in and out) and train.gradients (canonical gradients).
Gluon's own parameter names ("densenet0_conv0_weight") are never used.
"""

from __future__ import annotations

from mxnet import gluon
from mxnet.gluon.parameter import DeferredInitializationError

from densenet_spec.errors import DenseNetError
from densenet_spec.params import param_specs


class UninitializedModelError(DenseNetError, RuntimeError):
    """Weights read from or loaded into a Gluon model whose parameters hold no data yet."""


# canonical leaf -> Gluon parameter attribute, for BatchNorm; conv and dense use the same names
BN_LEAVES = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "running_mean",
    "running_var": "running_var",
}


def block_at(model: gluon.Block, path: str) -> gluon.Block:
    """model.blocks[0].layers[1].norm1 for "blocks.0.layers.1.norm1"."""
    block = model
    for part in path.split("."):
        block = block[int(part)] if part.isdigit() else getattr(block, part)
    return block


def parameters(model: gluon.Block, *, initialized: bool = True) -> dict[str, gluon.Parameter]:
    """canonical name -> the model's own Parameter, walking the spec's table of names.

    initialized=True: UninitializedModelError, naming the canonical names, unless every
    Parameter holds data (Gluon's own error names its internal ones, "conv0_weight").
    """
    out = {}
    for spec in param_specs(model.config):
        block_path, leaf = spec.name.rsplit(".", 1)
        block = block_at(model, block_path)
        attr = BN_LEAVES[leaf] if isinstance(block, gluon.nn.BatchNorm) else leaf
        param = getattr(block, attr)
        if param.shape != spec.shape:
            raise AssertionError(f"{spec.name}: model has shape {param.shape}, spec {spec.shape}")
        out[spec.name] = param
    n_model = len(model.collect_params().keys())
    if n_model != len(out):
        raise AssertionError(f"model has {n_model} parameters, the spec's table {len(out)}")
    empty = [name for name, param in out.items() if not _has_data(param)] if initialized else []
    if empty:
        raise UninitializedModelError(
            f"the model is not initialized: {len(empty)} of {len(out)} parameters hold no data "
            f"({', '.join(empty[:4])}{', ...' if len(empty) > 4 else ''}); call "
            "model.initialize(ctx=...) first, or build it with densenet_mx.make_model / "
            "from_preset / from_file, which return initialized models"
        )
    return out


def _has_data(param: gluon.Parameter) -> bool:
    try:
        param.data()
    except (RuntimeError, DeferredInitializationError):
        return False
    return True
