"""The small API every densenet_* package shares (the same names in all four):

    model = from_preset("d2l")                    # or from_file("weights.safetensors")
    load(model, "weights.safetensors")
    logits = predict(model, from_nchw(images))    # images: NumPy, NCHW

JAX's layout here is NHWC (LAYOUT): from_nchw moves the channel axis last, once, at the edge.
predict runs one nnx.jit-compiled eval-mode forward (compiled once per input shape and dtype).

First contact is quick: drawing the initial weights with NNX's initialisers runs (or compiles) a
random-number kernel per tensor, about 10 s for d2l on CPU, and an uncompiled forward dispatches
op by op, about 7 s. from_preset builds the model abstractly (nnx.eval_shape, no arrays) and
fills it with the spec's deterministic initial weights (densenet_spec.params.init_params,
NumPy: torchvision's Kaiming normal scheme), unless `rngs` asks for NNX's own initialisers.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from densenet_jax.inputs import check_input
from densenet_jax.model import DenseNet
from densenet_jax.variants import make_model
from densenet_jax.weights import from_canonical, load_weights, save_weights
from densenet_spec import weightfile
from densenet_spec.config import DenseNetConfig, check_float_dtype, get_preset
from densenet_spec.errors import InputShapeError
from densenet_spec.params import init_params

LAYOUT = "NHWC"


def from_preset(
    name: str,
    *,
    variant: str = "plain",
    memory_efficient: bool = False,
    dtype: str | jnp.dtype = "float32",
    rngs: nnx.Rngs | None = None,
    seed: int = 0,
    **overrides,
) -> DenseNet:
    """The preset's DenseNet (config fields replaced by `overrides`) in dtype, initialised: ready
    to load weights and predict. Weights: the spec's initial weights from `seed` (quick), or
    NNX's initialisers drawing from `rngs` when given. float64 turns on jax_enable_x64."""
    dtype = check_float_dtype(dtype, "model")  # before the preset is even read
    config = get_preset(name).replace(**overrides)
    if rngs is not None:
        _enable_x64(dtype)
        return make_model(config, variant, memory_efficient, dtype=jnp.dtype(dtype), rngs=rngs)
    return _build(config, variant, memory_efficient, dtype, init_params(config, seed, dtype))


def from_file(
    path: str | os.PathLike, *, variant: str = "plain", dtype: str | jnp.dtype | None = None
) -> DenseNet:
    """A DenseNet built from the config stored in a weight file, with its weights loaded.

    dtype defaults to the file's; another float dtype converts the weights."""
    if dtype is not None:
        dtype = check_float_dtype(dtype, "model")  # before the file is read
    tensors, config = weightfile.load_weights(path)  # validated: names, shapes, values
    dtype = check_float_dtype(dtype or next(iter(tensors.values())).dtype, "model")
    tensors = {k: np.asarray(v, dtype) for k, v in tensors.items()}
    return _build(config, variant, False, dtype, tensors)


def save(model: DenseNet, path: str | os.PathLike) -> None:
    """Write the model's canonical weights (running statistics included) to a weight file."""
    save_weights(model, path)


def load(model: DenseNet, path: str | os.PathLike) -> None:
    """Load a weight file written for this config and dtype into the model."""
    load_weights(model, path)


def predict(model: DenseNet, x: jax.Array | np.ndarray) -> jax.Array:
    """Logits in eval mode (running statistics) for an NHWC batch, by one compiled forward;
    every module's train/eval mode is left as it was."""
    check_input(model, x, training=False)  # named errors before tracing
    modes = [
        (module, name, getattr(module, name))
        for _, module in nnx.iter_graph(model)
        if isinstance(module, nnx.Module)
        for name in ("use_running_average", "deterministic")
        if hasattr(module, name)
    ]
    model.eval()
    try:
        return _forward(model, jnp.asarray(x))
    finally:
        for module, name, value in modes:
            setattr(module, name, value)


def from_nchw(x: np.ndarray) -> jax.Array:
    """An NCHW NumPy batch as an NHWC jax.Array, its dtype kept (float64 turns on x64)."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise InputShapeError(f"from_nchw takes an NCHW batch (rank 4), got shape {x.shape}")
    if x.dtype == np.float64:
        _enable_x64("float64")
    return jnp.asarray(np.ascontiguousarray(np.moveaxis(x, 1, -1)))


@nnx.jit
def _forward(model, x):
    return model(x)


def _build(
    config: DenseNetConfig, variant: str, memory_efficient: bool, dtype: str, tensors: dict
) -> DenseNet:
    """The model built abstractly (nnx.eval_shape: no initialiser runs), then every tensor set
    from canonical `tensors` (from_canonical checks that none is left out)."""
    _enable_x64(dtype)
    model = nnx.eval_shape(
        lambda: make_model(config, variant, memory_efficient, dtype=jnp.dtype(dtype))
    )
    from_canonical(model, tensors)
    return model


def _enable_x64(dtype: str) -> None:
    # float64 arrays need x64 (JAX otherwise makes them float32); never turned off again
    if dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
