"""Runs one parity case in JAX: NCHW in, NHWC inside, canonical (NCHW, OIHW) out."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from densenet_jax.model import DenseNet
from densenet_jax.train import _loss_and_gradients, loss_fn, make_optimizer, train_step
from densenet_jax.weights import _canonical, from_canonical, to_canonical
from densenet_spec.case import Case, result_keys
from densenet_spec.errors import DeviceUnavailableError
from densenet_spec.params import param_specs


def environment(device: str, dtype: str) -> dict:
    """Apply the device and precision settings the case asks for; return what was applied."""
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)  # before any float64 array is created
    try:
        devices = jax.devices(device)
    except RuntimeError:  # "Unknown backend gpu" / "Backend 'gpu' failed to initialize"
        devices = []
    if not devices:
        available = sorted({d.platform for d in jax.devices()})
        raise DeviceUnavailableError(f"jax: no {device} device (available: {', '.join(available)})")
    jax.config.update("jax_default_device", devices[0])
    precision = "default"
    if device in ("gpu", "tpu"):
        # parity: by default JAX lets float32 convolutions and matmuls use TF32 on GPUs and
        # bfloat16 passes on TPUs; "highest" asks for full float32.
        jax.config.update("jax_default_matmul_precision", "highest")
        precision = "highest"
    return {
        "device": str(devices[0]),
        "dtype": dtype,
        "x64": bool(jax.config.jax_enable_x64),
        "precision": precision,
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
    }


def _nhwc(a: np.ndarray) -> jax.Array:
    return jnp.asarray(a.transpose(0, 2, 3, 1))  # parity: NCHW -> NHWC once, at the edge


def _nchw(a) -> np.ndarray:
    a = np.asarray(a)
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


@nnx.jit
def _features_and_loss(model, x, y):
    features = model.forward_features(x)
    return loss_fn(features["logits"], y), features


def run_case(case: Case) -> tuple[dict, dict]:
    info = {**environment(case.device, case.dtype), "memory_efficient": case.memory_efficient}
    # nnx.eval_shape builds the model without drawing initial weights (compiling the random
    # initialisers shape by shape is slow on CPU); from_canonical then sets every tensor and
    # checks that none is left out. Every quantity below starts from a clone of these weights.
    loaded = nnx.eval_shape(
        lambda: DenseNet(case.config, case.memory_efficient, dtype=jnp.dtype(case.dtype))
    )
    from_canonical(loaded, case.params)

    x, y = _nhwc(case.x), jnp.asarray(case.y)
    results: dict[str, np.ndarray] = {}
    for mode in ("eval", "train"):
        model = nnx.clone(loaded)
        if mode == "train":
            model.train()
        else:
            model.eval()
        if "grad" in case.quantities:
            # The stage outputs come from the gradient's own forward pass: one compilation.
            loss, grad_input, grads, features = _loss_and_gradients(model, x, y)
            results[f"{mode}_grad/input"] = _nchw(grad_input)
            if mode == "train":
                trainable = [s for s in param_specs(case.config) if s.trainable]
                grads = _canonical(grads, trainable)
                results.update({f"train_grad/{k}": v for k, v in grads.items()})
        elif mode in case.quantities:
            loss, features = _features_and_loss(model, x, y)
        else:
            continue
        if mode in case.quantities:
            results.update({f"{mode}/{k}": _nchw(v) for k, v in features.items()})
            results[f"loss/{mode}"] = np.asarray(loss).reshape(1)
    if "step" in case.quantities:
        model = nnx.clone(loaded)
        optimizer = make_optimizer(model, case.sgd)
        for k in range(case.steps):
            train_step(model, optimizer, _nhwc(case.step_x[k]), jnp.asarray(case.step_y[k]))
        results.update({f"step/{k}": v for k, v in to_canonical(model).items()})
    return {k: results[k] for k in result_keys(case)}, info
