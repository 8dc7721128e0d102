"""Run one parity case (densenet_spec.case.Case) with the TensorFlow/Keras DenseNet.

Called by `python -m densenet_spec.worker tf <case folder> <result file>` in the tf environment.
The model is NHWC with HWIO kernels; inputs are transposed from NCHW once here, and results go
back to the canonical layout (features NCHW, weights via weights.to_canonical).

TF_ENABLE_ONEDNN_OPTS=0 for parity runs (the process may set it otherwise; info["precision"]
records what was used). TensorFlow reads it once, at import, so it is set at the top of this
module, before TensorFlow is imported; densenet_tf/__init__.py imports no TensorFlow for that
reason, and the harness imports this module first. oneDNN's CPU kernels are deterministic run
to run either way and leave float64 results unchanged, but they reorder float32 sums, and
measured further from the float64 oracle than TF's own (Eigen) kernels, enough to fail the
derived float32 bound (max relative error vs the oracle in float64; batch 2, 2 SGD steps):
    case                             oneDNN off           oneDNN on
    d2l 64x64  eval / step           6.7e-07 / 9.4e-07    1.6e-06 / 1.4e-06   both pass
    densenet_bc_100 8x8  step        1.4e-05              1.0e-03             on: 84 keys fail
    densenet121 64x64 (1 step) step  2.1e-05              5.1e-04             on: 3 keys fail
"""

from __future__ import annotations

import os
import sys

# parity: oneDNN off (see above); must precede the first TensorFlow import.
_ONEDNN_FOR_PARITY = "0"
_ONEDNN = os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", _ONEDNN_FOR_PARITY)
_TF_IMPORTED_FIRST = "tensorflow" in sys.modules  # then the setting above came too late

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework import config as _tf_config  # noqa: E402  (op determinism getter)

import keras  # noqa: E402
from densenet_spec.case import Case  # noqa: E402
from densenet_spec.config import same_pads
from densenet_spec.errors import DeviceUnavailableError  # noqa: E402
from densenet_tf.model import DenseNet  # noqa: E402
from densenet_tf.train import gradients, loss_fn, make_optimizer, train_step  # noqa: E402
from densenet_tf.weights import from_canonical, to_canonical  # noqa: E402


def _precision_settings(device: str, dtype: str, *, op_determinism: bool = True) -> dict:
    """The precision and determinism settings for a parity run on device, by name; pure (needs
    neither the device nor any change to the process), so it is testable on CPU.

    environment() applies exactly these, through _SETTINGS, and records them read back.
    TF_ENABLE_ONEDNN_OPTS is the exception: TensorFlow reads it at import, so this module sets
    it (to _ONEDNN_FOR_PARITY) before importing TensorFlow, and environment() only reads it.
    """
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    if device == "tpu":
        raise DeviceUnavailableError(
            "tf: no tpu device (densenet_tf runs on cpu or gpu; TPUs need a TPUStrategy)"
        )
    if device not in ("cpu", "gpu"):
        raise DeviceUnavailableError(f"tf: unknown device {device!r} (cpu, gpu, tpu)")
    settings = {
        "TF_ENABLE_ONEDNN_OPTS": _ONEDNN_FOR_PARITY,
        # False leaves it off (XLA runs); once on, it stays on for the process.
        "tf.config.experimental.enable_op_determinism": op_determinism,
    }
    if device == "gpu":
        # parity: TF32 would round conv and matmul inputs to 10 mantissa bits on Ampere+.
        settings["tf.config.experimental.enable_tensor_float_32_execution"] = False
    return settings


def _set_op_determinism(on: bool) -> None:
    if on:
        tf.config.experimental.enable_op_determinism()


def _set_onednn(value: str) -> None:
    """Nothing to do now: TensorFlow read TF_ENABLE_ONEDNN_OPTS at import (top of module)."""


# name -> (apply the value, read it back): the only way environment() changes a setting.
_SETTINGS = {
    "TF_ENABLE_ONEDNN_OPTS": (_set_onednn, lambda: _ONEDNN),
    "tf.config.experimental.enable_op_determinism": (
        _set_op_determinism,
        _tf_config.is_op_determinism_enabled,
    ),
    "tf.config.experimental.enable_tensor_float_32_execution": (
        tf.config.experimental.enable_tensor_float_32_execution,
        tf.config.experimental.tensor_float_32_execution_enabled,
    ),
}


def environment(device: str, dtype: str, *, op_determinism: bool = True) -> dict:
    """Apply the device and precision settings for a parity run; return what was applied.

    op_determinism=False is for XLA runs only: TF's XLA bridge has no deterministic MaxPoolGrad
    and refuses to compile it while op determinism is on (XLA on CPU is deterministic anyway).
    Once on, op determinism stays on for the process.
    """
    # also rejects unknown dtypes and devices
    settings = _precision_settings(device, dtype, op_determinism=op_determinism)
    versions = {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}
    if device == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            build = "a CUDA build" if tf.test.is_built_with_cuda() else "a CPU-only build"
            raise DeviceUnavailableError(
                f"tf: no gpu device (tf.config.list_physical_devices('GPU') is empty; "
                f"tensorflow {tf.__version__} is {build})"
            )
        device_name = "/GPU:0"
        build = tf.sysconfig.get_build_info()
        versions |= {"cuda": build.get("cuda_version"), "cudnn": build.get("cudnn_version")}
    else:
        device_name = "/CPU:0"
    for name, value in settings.items():
        _SETTINGS[name][0](value)
    precision = {name: _SETTINGS[name][1]() for name in settings}  # read back
    precision["onednn_set_before_import"] = not _TF_IMPORTED_FIRST
    return {
        "device": device,
        "device_name": device_name,
        "dtype": dtype,
        "precision": precision,
        "num_threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
        "versions": versions,
    }



def _apply_mutation(model: DenseNet, kind: str, height: int, width: int) -> None:
    """Self-check hook (harness --mutate tf:same_padding): the ImageNet stem's 7x7/2 conv and
    3x3/2 max-pool pad the TF/XLA 'same' way, (2, 3) and (0, 1) on even sizes instead of the
    spec's (3, 3) and (1, 1): the d2l JAX/TF tabs' mistake. Only the two ZeroPadding2D layers
    change (zeros before the max-pool are fine: its input is post-ReLU); weights unchanged."""
    if kind != "same_padding":
        raise ValueError(
            f"tf: unknown mutation {kind!r}; known: same_padding (bn_eps comes in the config)"
        )
    if model.config.stem != "imagenet":
        raise ValueError("tf: same_padding changes the strided ImageNet stem; this config has none")
    model.stem.pad.padding = (same_pads(height, 7, 2), same_pads(width, 7, 2))
    model.stem.pool_pad.padding = (
        same_pads(-(-height // 2), 3, 2),
        same_pads(-(-width // 2), 3, 2),
    )


def _nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(a, -3, -1))  # (..., C, H, W) -> (..., H, W, C)


def _canonical_feature(v) -> np.ndarray:
    v = np.asarray(v)
    return np.ascontiguousarray(v.transpose(0, 3, 1, 2)) if v.ndim == 4 else v


def run_case(case: Case) -> tuple[dict, dict]:
    """Fill every key of densenet_spec.case.result_keys(case); return (results, info)."""
    jit_compile = bool(case.options.get("jit_compile", False))
    info = environment(case.device, case.dtype, op_determinism=not jit_compile)
    info |= {"memory_efficient": case.memory_efficient, "jit_compile": jit_compile}

    with tf.device(info["device_name"]):
        model = DenseNet(case.config, memory_efficient=case.memory_efficient, dtype=case.dtype)
        if "mutate" in case.options:
            _apply_mutation(model, case.options["mutate"], *case.x.shape[2:])

        def reloaded() -> DenseNet:
            """The case's weights again: no running statistics leak between quantities."""
            from_canonical(model, case.params)
            return model

        x, y = tf.constant(_nhwc(case.x)), tf.constant(case.y)
        results: dict[str, np.ndarray] = {}
        for mode in ("eval", "train"):
            if mode in case.quantities:
                features = reloaded().forward_features(x, training=mode == "train")
                results |= {f"{mode}/{k}": _canonical_feature(v) for k, v in features.items()}
                loss = loss_fn(features["logits"], y)
                results[f"loss/{mode}"] = np.reshape(loss.numpy(), (1,))
        if "grad" in case.quantities:
            _, grad_input, _ = gradients(reloaded(), x, y, training=False)
            results["eval_grad/input"] = _canonical_feature(grad_input)
            _, grad_input, grads = gradients(reloaded(), x, y, training=True)
            results["train_grad/input"] = _canonical_feature(grad_input)
            results |= {f"train_grad/{k}": g for k, g in grads.items()}
        if "step" in case.quantities:
            model = reloaded()
            optimizer = make_optimizer(model, case.sgd)
            for k in range(case.steps):
                step_x, step_y = tf.constant(_nhwc(case.step_x[k])), tf.constant(case.step_y[k])
                train_step(model, optimizer, step_x, step_y, jit_compile=jit_compile)
            results |= {f"step/{k}": v for k, v in to_canonical(model).items()}
    return results, info
