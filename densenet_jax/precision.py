"""The precision settings of a parity run, by name (applied by adapter.environment).

precision_settings() is pure (needs neither the device nor any change to the process), so what a
GPU or TPU run would set is testable on CPU. environment() applies exactly these with
jax.config.update and records them read back.
"""

from __future__ import annotations

from densenet_spec.errors import DeviceUnavailableError

DTYPES = ("float32", "float64")
DEVICES = ("cpu", "gpu", "tpu")
# densenet-parity --tf32: "off" (parity: full float32 matmuls and convolutions on GPUs) or
# "default" (JAX's own default precision on GPUs, which lets float32 use TF32)
TF32_MODES = ("off", "default")


def precision_settings(device: str, dtype: str, tf32: str = "off") -> dict:
    """The jax.config settings for a parity run on `device` in `dtype`, by name.

    tf32="default" leaves jax_default_matmul_precision at JAX's default on a GPU; a TPU run
    always asks for "highest" (its default is bfloat16 passes, not TF32).

    jax_enable_x64 is set for float64 only and never turned off: a float32 run does not need it
    (every array is created with an explicit dtype), and turning it off would silently make
    float64 arrays float32 for any other code in the process (tests run both dtypes in one).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    if device not in DEVICES:
        raise DeviceUnavailableError(f"jax: unknown device {device!r} (cpu, gpu, tpu)")
    if tf32 not in TF32_MODES:
        raise ValueError(f"tf32 must be one of {', '.join(TF32_MODES)}, got {tf32!r}")
    settings = {"jax_enable_x64": True} if dtype == "float64" else {}
    if device == "tpu" or (device == "gpu" and tf32 == "off"):
        # parity: by default JAX lets float32 convolutions and matmuls use TF32 on GPUs and
        # bfloat16 passes on TPUs; "highest" asks for full float32 (CPU computes it anyway).
        settings["jax_default_matmul_precision"] = "highest"
    return settings
