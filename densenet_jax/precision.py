"""The precision settings of a parity run, by name (applied by adapter.environment).

precision_settings() is pure (needs neither the device nor any change to the process), so what a
GPU or TPU run would set is testable on CPU. environment() applies exactly these with
jax.config.update and records them read back.
"""

from __future__ import annotations

from densenet_spec.errors import DeviceUnavailableError

DTYPES = ("float32", "float64")
DEVICES = ("cpu", "gpu", "tpu")


def precision_settings(device: str, dtype: str) -> dict:
    """The jax.config settings for a parity run on `device` in `dtype`, by name.

    jax_enable_x64 is set for float64 only and never turned off: a float32 run does not need it
    (every array is created with an explicit dtype), and turning it off would silently make
    float64 arrays float32 for any other code in the process (tests run both dtypes in one).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    if device not in DEVICES:
        raise DeviceUnavailableError(f"jax: unknown device {device!r} (cpu, gpu, tpu)")
    settings = {"jax_enable_x64": True} if dtype == "float64" else {}
    if device in ("gpu", "tpu"):
        # parity: by default JAX lets float32 convolutions and matmuls use TF32 on GPUs and
        # bfloat16 passes on TPUs; "highest" asks for full float32 (CPU computes it anyway).
        settings["jax_default_matmul_precision"] = "highest"
    return settings
