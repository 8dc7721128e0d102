"""The precision and determinism settings of a parity run, by name (applied by adapter.environment).

precision_settings() is pure (needs neither the device nor any change to the process), so what a
GPU run would set is testable on CPU. SETTINGS is the only way environment() changes a setting:
name -> (apply the value, read it back), and the info records the values read back.

TF_ENABLE_ONEDNN_OPTS=0 for parity runs (the process may set it otherwise; the info records what
was used). TensorFlow reads it once, at import, so this module sets it before importing
TensorFlow, and densenet_tf.adapter imports this module first. oneDNN's CPU kernels reorder
float32 sums and land further from the float64 oracle than TF's own (Eigen) kernels, enough to
fail the derived float32 bound on densenet_bc_100 and densenet121 (numbers in the docs).
"""

from __future__ import annotations

import os
import sys

# parity: oneDNN off (see above); must precede the first TensorFlow import.
ONEDNN_FOR_PARITY = "0"
ONEDNN = os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", ONEDNN_FOR_PARITY)
TF_IMPORTED_FIRST = "tensorflow" in sys.modules  # then the setting above came too late

import tensorflow as tf  # noqa: E402

from densenet_spec.errors import DeviceUnavailableError  # noqa: E402


def precision_settings(device: str, dtype: str, *, op_determinism: bool = True) -> dict:
    """The precision and determinism settings for a parity run on device, by name; pure (needs
    neither the device nor any change to the process), so it is testable on CPU.

    environment() applies exactly these, through SETTINGS, and records them read back.
    TF_ENABLE_ONEDNN_OPTS is the exception: TensorFlow reads it at import, so this module sets
    it (to ONEDNN_FOR_PARITY) before importing TensorFlow, and environment() only reads it.
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
        "TF_ENABLE_ONEDNN_OPTS": ONEDNN_FOR_PARITY,
        # False leaves it off (XLA runs); once on, it stays on for the process.
        "tf.config.experimental.enable_op_determinism": op_determinism,
    }
    if device == "gpu":
        # parity: TF32 would round conv and matmul inputs to 10 mantissa bits on Ampere+.
        settings["tf.config.experimental.enable_tensor_float_32_execution"] = False
    return settings


def op_determinism_enabled() -> bool:
    """Whether tf.config.experimental.enable_op_determinism() is in force (TF has no public
    getter): with it on, a random op without any seed raises, and a fresh graph has no seed."""
    with tf.Graph().as_default():
        try:
            tf.random.uniform([])
        except RuntimeError as e:
            if "determinism" in str(e):
                return True
            raise
    return False


def _set_op_determinism(on: bool) -> None:
    if on:
        tf.config.experimental.enable_op_determinism()


def _set_onednn(value: str) -> None:
    """Nothing to do now: TensorFlow read TF_ENABLE_ONEDNN_OPTS at import (top of module)."""


# name -> (apply the value, read it back): the only way environment() changes a setting.
SETTINGS = {
    "TF_ENABLE_ONEDNN_OPTS": (_set_onednn, lambda: ONEDNN),
    "tf.config.experimental.enable_op_determinism": (_set_op_determinism, op_determinism_enabled),
    "tf.config.experimental.enable_tensor_float_32_execution": (
        tf.config.experimental.enable_tensor_float_32_execution,
        tf.config.experimental.tensor_float_32_execution_enabled,
    ),
}
