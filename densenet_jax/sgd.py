"""Optax SGD's momentum buffers in canonical names (densenet_spec.training's checkpoints).

train.make_optimizer chains optax.add_decayed_weights(wd) and
optax.inject_hyperparams(optax.sgd)(lr, momentum); optax.sgd is optax.trace(momentum) then
scale_by_learning_rate. optax.trace keeps `trace = g + momentum * trace` of the decayed
gradient g + wd * p, and the update is -lr * trace: the spec's buffer as written (the rate
outside it), zeros before the first step. So reading and writing it is a renaming plus the
kernel layouts (weights.LEAVES), and a new rate is the injected "learning_rate" hyperparameter
(an array in the optimizer's state: the compiled step reads it, nothing recompiles).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from densenet_jax.weights import LEAVES
from densenet_spec.errors import OptimizerStateError
from densenet_spec.params import check_momentum_buffers, param_specs


def spec_buffers(model: nnx.Module, optimizer: nnx.Optimizer) -> dict[str, np.ndarray]:
    """Every trainable canonical name -> its momentum buffer (canonical layout, the model's dtype;
    zeros before the first step)."""
    flat = _trace(optimizer)
    out = {}
    for spec in _trainable(model):
        _, axes = LEAVES[spec.kind]
        value = np.asarray(flat[_path(spec)].get_value())
        value = value if axes is None else value.transpose(np.argsort(axes))
        out[spec.name] = np.ascontiguousarray(value)
    return out


def load_spec_buffers(model: nnx.Module, optimizer: nnx.Optimizer, buffers: dict) -> None:
    """The inverse of spec_buffers: the next train step continues from `buffers` (from any
    framework; converted to the model's dtype). Validated in full before anything is written."""
    specs = _trainable(model)
    check_momentum_buffers(buffers, model.config)
    flat = _trace(optimizer)
    for spec in specs:
        _, axes = LEAVES[spec.kind]
        value = np.asarray(buffers[spec.name], model.dtype)
        value = value if axes is None else value.transpose(axes)
        flat[_path(spec)].set_value(jnp.asarray(value))


def set_lr(optimizer: nnx.Optimizer, lr: float) -> None:
    """The rate of the next step (the buffers do not hold it)."""
    rate = _inject_state(optimizer).hyperparams["learning_rate"]
    rate.set_value(jnp.asarray(lr, rate.get_value().dtype))


def _inject_state(optimizer: nnx.Optimizer):
    for state in optimizer.opt_state:  # chain: (add_decayed_weights, inject_hyperparams(sgd))
        if isinstance(state, optax.InjectStatefulHyperparamsState):
            return state
    raise OptimizerStateError("the optimizer is not train.make_optimizer's (no injected rate)")


def _trace(optimizer: nnx.Optimizer) -> dict:
    """NNX path -> the momentum variable (optax.TraceState.trace)."""
    for state in _inject_state(optimizer).inner_state:
        if isinstance(state, optax.TraceState):
            return dict(nnx.to_flat_state(state.trace))
    raise OptimizerStateError("the optimizer keeps no momentum trace (optax.trace)")


def _trainable(model: nnx.Module) -> list:
    return [s for s in param_specs(model.config) if s.trainable]


def _path(spec) -> tuple:
    *modules, _ = spec.name.split(".")
    leaf, _ = LEAVES[spec.kind]
    return tuple(int(p) if p.isdigit() else p for p in modules) + (leaf,)
