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
from densenet_spec.config import same_pads
from densenet_spec.errors import DeviceUnavailableError
from densenet_spec.params import param_specs


_DTYPES = ("float32", "float64")


def _precision_settings(device: str, dtype: str) -> dict:
    """The jax.config settings environment() applies for a parity run on device, by name; pure
    (needs neither the device nor any change to the process), so it is testable on CPU.
    environment() applies exactly these with jax.config.update and records them read back.

    jax_enable_x64 is set for float64 only and never turned off: a float32 run does not need it
    (every array is created with an explicit dtype), and turning it off would silently make
    float64 arrays float32 for any other code in the process (tests run both dtypes in one).
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    if device not in ("cpu", "gpu", "tpu"):
        raise DeviceUnavailableError(f"jax: unknown device {device!r} (cpu, gpu, tpu)")
    settings = {"jax_enable_x64": True} if dtype == "float64" else {}
    if device in ("gpu", "tpu"):
        # parity: by default JAX lets float32 convolutions and matmuls use TF32 on GPUs and
        # bfloat16 passes on TPUs; "highest" asks for full float32 (CPU computes it anyway).
        settings["jax_default_matmul_precision"] = "highest"
    return settings


def environment(device: str, dtype: str) -> dict:
    """Apply the device and precision settings the case asks for; return what was applied."""
    settings = _precision_settings(device, dtype)  # also rejects unknown dtypes and devices
    try:
        devices = jax.devices(device)
    except RuntimeError:  # "Unknown backend gpu" / "Backend 'gpu' failed to initialize"
        devices = []
    if not devices:
        available = sorted({d.platform for d in jax.devices()})
        raise DeviceUnavailableError(f"jax: no {device} device (available: {', '.join(available)})")
    for name, value in settings.items():  # x64: before any float64 array is created
        jax.config.update(name, value)
    jax.config.update("jax_default_device", devices[0])
    return {
        "device": str(devices[0]),
        "dtype": dtype,
        "x64": bool(jax.config.jax_enable_x64),
        "precision": {name: getattr(jax.config, name) for name in settings},  # read back
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
    }



class _SamePaddingStem(nnx.Module):
    """densenet_jax.model's ImageNet stem (the same conv and norm, so the same weights under the
    same names) with the 7x7/2 conv and the 3x3/2 max-pool padded by the given pads."""

    def __init__(self, stem, conv_padding, pool_padding):
        stem.conv.padding = conv_padding  # nnx.Conv reads it at every call
        self.conv = stem.conv
        self.imagenet = stem.imagenet
        self.norm = stem.norm
        self.pool_padding = pool_padding

    def __call__(self, x):
        x = nnx.relu(self.norm(self.conv(x)))
        # max_pool pads with -inf, its init value, as the spec's stem does
        return nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding=self.pool_padding)


def _apply_mutation(model: DenseNet, kind: str, height: int, width: int) -> None:
    """Self-check hook (harness --mutate jax:same_padding): the ImageNet stem's 7x7/2 conv and
    3x3/2 max-pool pad the TF/XLA 'same' way, (2, 3) and (0, 1) on even sizes instead of the
    spec's (3, 3) and (1, 1): the d2l JAX tab's mistake. The stem's max-pool padding is written
    in its __call__, so the stem is swapped for one that reads it; weights and names unchanged.
    Call before any jit tracing of the model."""
    if kind != "same_padding":
        raise ValueError(
            f"jax: unknown mutation {kind!r}; known: same_padding (bn_eps comes in the config)"
        )
    if model.config.stem != "imagenet":
        raise ValueError(
            "jax: same_padding changes the strided ImageNet stem; this config has none"
        )
    model.stem = _SamePaddingStem(
        model.stem,
        conv_padding=(same_pads(height, 7, 2), same_pads(width, 7, 2)),
        pool_padding=(same_pads(-(-height // 2), 3, 2), same_pads(-(-width // 2), 3, 2)),
    )


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
    if "mutate" in case.options:  # case.x is NCHW: (H, W) = shape[2:]
        _apply_mutation(loaded, case.options["mutate"], *case.x.shape[2:])

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
        model = nnx.clone(loaded, arrays=True)  # train_step donates the model's buffers
        optimizer = make_optimizer(model, case.sgd)
        for k in range(case.steps):
            train_step(model, optimizer, _nhwc(case.step_x[k]), jnp.asarray(case.step_y[k]))
        results.update({f"step/{k}": v for k, v in to_canonical(model).items()})
    return {k: results[k] for k in result_keys(case)}, info
