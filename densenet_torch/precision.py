"""The precision and determinism settings of a parity run, by name (applied by adapter.environment).

precision_settings() is pure (needs neither the device nor any change to the process), so what a
GPU run would set is testable on CPU. SETTINGS is the only way environment() changes a setting:
name -> (apply the value, read it back), and the info records the values read back.
"""

from __future__ import annotations

import os

import torch

from densenet_spec.errors import DeviceUnavailableError

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# densenet-parity --tf32: "off" (parity: full float32 matmuls and convolutions on GPUs) or
# "default" (torch's own: matmuls without TF32, cuDNN convolutions with it)
TF32_MODES = ("off", "default")
TF32_SETTINGS = ("torch.backends.cuda.matmul.allow_tf32", "torch.backends.cudnn.allow_tf32")


def precision_settings(device: str, dtype: str, tf32: str = "off") -> dict:
    """The settings environment() applies for a parity run on `device` in `dtype`, by name;
    with tf32="default" a GPU run leaves TF32_SETTINGS at torch's defaults (not set)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    if tf32 not in TF32_MODES:
        raise ValueError(f"tf32 must be one of {', '.join(TF32_MODES)}, got {tf32!r}")
    if device == "cpu":
        return {"torch.use_deterministic_algorithms": True}
    if device == "gpu":
        settings = {
            # cuBLAS needs a fixed workspace for reproducible matmuls; read when cuBLAS starts.
            "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
            "torch.backends.cuda.matmul.allow_tf32": False,  # parity: TF32 rounds to 10 bits
            "torch.backends.cudnn.allow_tf32": False,  # parity: likewise for convolutions
            "torch.backends.cudnn.deterministic": True,
            "torch.backends.cudnn.benchmark": False,  # autotuning may pick another kernel per run
            # warn_only: an op without a deterministic CUDA kernel warns instead of failing.
            "torch.use_deterministic_algorithms": "warn_only",
        }
        if tf32 == "default":
            for name in TF32_SETTINGS:
                del settings[name]
        return settings
    if device == "tpu":
        raise DeviceUnavailableError(
            "torch: no tpu device (torch/XLA is not supported by densenet_torch)"
        )
    raise DeviceUnavailableError(f"torch: unknown device {device!r} (cpu, gpu, tpu)")


def set_deterministic(value: bool | str) -> None:
    """True, "warn_only" or False, as deterministic() reads it back."""
    torch.use_deterministic_algorithms(bool(value), warn_only=value == "warn_only")


def deterministic() -> bool | str:
    if not torch.are_deterministic_algorithms_enabled():
        return False
    return "warn_only" if torch.is_deterministic_algorithms_warn_only_enabled() else True


# name -> (apply the value, read it back)
SETTINGS = {
    "CUBLAS_WORKSPACE_CONFIG": (
        lambda v: os.environ.__setitem__("CUBLAS_WORKSPACE_CONFIG", v),
        lambda: os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    ),
    "torch.backends.cuda.matmul.allow_tf32": (
        lambda v: setattr(torch.backends.cuda.matmul, "allow_tf32", v),
        lambda: torch.backends.cuda.matmul.allow_tf32,
    ),
    "torch.backends.cudnn.allow_tf32": (
        lambda v: setattr(torch.backends.cudnn, "allow_tf32", v),
        lambda: torch.backends.cudnn.allow_tf32,
    ),
    "torch.backends.cudnn.deterministic": (
        lambda v: setattr(torch.backends.cudnn, "deterministic", v),
        lambda: torch.backends.cudnn.deterministic,
    ),
    "torch.backends.cudnn.benchmark": (
        lambda v: setattr(torch.backends.cudnn, "benchmark", v),
        lambda: torch.backends.cudnn.benchmark,
    ),
    "torch.use_deterministic_algorithms": (set_deterministic, deterministic),
}
