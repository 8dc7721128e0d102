"""Memory-efficient dense layers (torchvision's memory_efficient=True), for any backend.

A dense layer's input is the concatenation of every earlier feature map, so keeping each layer's
input for backward costs memory quadratic in depth. MemoryEfficientDenseBlock keeps only the
separate feature maps (linear in depth) and each layer's state; backward concatenates them and
runs the layer again (a jax.custom_vjp per layer), so the model is differentiable in reverse
mode only (jax.grad, jax.vjp), not in forward mode (jax.jvp, jax.hessian).

Not nnx.remat / jax.checkpoint: they mark the recomputation with an optimization barrier, which
XLA's CPU compiler removes first (cse_barrier_expander), and then nothing keeps the
recomputation out of the forward pass (CSE, scheduling); compiled, the train step keeps as much
as without them. The running statistics come out of the forward run only, so they are updated
exactly once per step.

The parity adapter's float32 pieces (densenet_spec/pieces.py): under nnx.capture every BatchNorm
with record_output sows its output (batchnorm.py), but a sow inside the custom_vjp lands in the
layer's merged copy. So each layer runs under its own nnx.capture there and returns what was sown
as a third output; the block sows those values again into its own layer's modules, where the
caller's nnx.capture finds them under the same paths as in the plain DenseBlock. Nothing sown
means an empty dict: outside the adapter's piece runs the layer computes exactly as before.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from densenet_jax.layers import CHANNEL_AXIS, DenseBlock


class MemoryEfficientDenseBlock(DenseBlock):
    """DenseBlock (same layers, same numbers) whose layers are recomputed in backward."""

    def __call__(self, x: jax.Array, features: dict | None = None) -> jax.Array:
        inputs = [x]  # the block input, then each layer's output y
        for j, layer in enumerate(self.layers):
            graphdef, state = nnx.split(layer)
            y, batch_stats, sown = recomputed_in_backward(graphdef, state, tuple(inputs))
            nnx.update(layer, batch_stats)
            _sow_again(layer, sown)
            if features is not None:
                features[f"layers.{j}"] = y
            inputs.append(y)
        return jnp.concatenate(inputs, axis=CHANNEL_AXIS)


def _sow_again(layer: nnx.Module, sown: dict) -> None:
    """Sow `sown` ({(*module path, name): values}, from concat_then_layer) into `layer`'s own
    modules, for the caller's nnx.capture."""
    for path, values in sown.items():
        module = layer
        for part in path[:-1]:
            module = module[part] if isinstance(part, int) else getattr(module, part)
        for value in values:
            module.sow(nnx.Intermediate, path[-1], value)


def concat_then_layer(graphdef: nnx.GraphDef, state: nnx.State, inputs: tuple) -> tuple:
    """The dense layer on the concatenation of `inputs`, as a pure function of the layer's state:
    its output, its BatchStats after the call (updated in train mode) and what its modules sowed
    as nnx.Intermediate ({(*module path, name): values}; empty unless a BatchNorm records its
    output for the adapter's pieces)."""
    layer = nnx.merge(graphdef, state)
    x = jnp.concatenate(inputs, axis=CHANNEL_AXIS)
    y, captured = nnx.capture(layer, nnx.Intermediate)(x)
    sown = {path: v.get_value() for path, v in nnx.to_flat_state(captured)}
    return y, nnx.state(layer, nnx.BatchStat), sown


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def recomputed_in_backward(graphdef: nnx.GraphDef, state: nnx.State, inputs: tuple) -> tuple:
    """concat_then_layer, keeping only `state` and `inputs` for backward."""
    return concat_then_layer(graphdef, state, inputs)


def _forward_keeping_inputs(graphdef, state, inputs):
    return concat_then_layer(graphdef, state, inputs), (state, inputs)


def _backward_recomputing(graphdef, kept, cotangents):
    state, inputs = kept
    # Make the recomputation read the incoming cotangent (x + 0 * one of its elements: the same
    # values; XLA never folds 0 * c for floats, c could be inf or NaN). XLA can then neither
    # CSE it with the forward pass nor schedule it before this layer's backward.
    zero = 0 * cotangents[0].reshape(-1)[0]
    inputs = tuple(x + zero.astype(x.dtype) for x in inputs)
    _, vjp = jax.vjp(partial(concat_then_layer, graphdef), state, inputs)
    return vjp(cotangents)


recomputed_in_backward.defvjp(_forward_keeping_inputs, _backward_recomputing)
