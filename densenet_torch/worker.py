"""Run one parity case (densenet_spec.case.Case) with the PyTorch DenseNet.

Called by `python -m densenet_spec.worker torch <case folder> <result file>` in the torch
environment. torch's native layout (NCHW) and parameter layout are the canonical ones, so
results only need .numpy(); channels_last changes strides, not the logical NCHW shape.
"""

from __future__ import annotations

import os
import platform

import numpy as np
import torch

from densenet_spec.case import Case, result_keys
from densenet_spec.errors import DeviceUnavailableError
from densenet_torch.model import DenseNet
from densenet_torch.train import gradients, loss_fn, make_optimizer, train_step
from densenet_torch.weights import from_canonical, to_canonical

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def environment(device: str, dtype: str) -> dict:
    """Apply the device and precision settings for a parity run; return what was applied."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    versions = {"torch": torch.__version__, "numpy": np.__version__}
    if device == "cpu":
        torch.use_deterministic_algorithms(True)
        precision = {"deterministic_algorithms": True}
        device_name = platform.processor() or platform.machine()
    elif device == "gpu":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise DeviceUnavailableError(
                f"torch: no gpu device (torch.cuda.is_available() is False; torch "
                f"{torch.__version__} is {build})"
            )
        # cuBLAS needs a fixed workspace for reproducible matmuls; read when cuBLAS starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = False  # parity: TF32 would round to 10 bits
        torch.backends.cudnn.allow_tf32 = False  # parity: likewise for convolutions
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False  # autotuning may pick a different kernel per run
        # warn_only: an op without a deterministic CUDA kernel warns instead of failing the run.
        torch.use_deterministic_algorithms(True, warn_only=True)
        precision = {
            "deterministic_algorithms": "warn_only",
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "cudnn.deterministic": torch.backends.cudnn.deterministic,
            "cudnn.benchmark": torch.backends.cudnn.benchmark,
            "CUBLAS_WORKSPACE_CONFIG": os.environ["CUBLAS_WORKSPACE_CONFIG"],
        }
        versions |= {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
        device_name = torch.cuda.get_device_name()
    elif device == "tpu":
        raise DeviceUnavailableError(
            "torch: no tpu device (torch/XLA is not supported by densenet_torch)"
        )
    else:
        raise DeviceUnavailableError(f"torch: unknown device {device!r} (cpu, gpu, tpu)")
    return {
        "device": device,
        "device_name": device_name,
        "dtype": dtype,
        "precision": precision,
        "num_threads": torch.get_num_threads(),
        "versions": versions,
    }


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def run_case(case: Case) -> tuple[dict, dict]:
    """Fill every key of densenet_spec.case.result_keys(case); return (results, info).

    case.options: "channels_last" (NHWC strides, same numbers), "threads" (CPU intra-op threads;
    torch's default is one per core, which oversubscribes a machine shared with other jobs).
    """
    if "threads" in case.options:
        torch.set_num_threads(int(case.options["threads"]))
    info = environment(case.device, case.dtype)
    device = torch.device("cuda" if case.device == "gpu" else "cpu")
    dtype = _DTYPES[case.dtype]
    channels_last = bool(case.options.get("channels_last", False))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    info |= {"memory_efficient": case.memory_efficient, "channels_last": channels_last,
             "compiled": False}

    def fresh_model() -> DenseNet:
        """The case's weights in a new model: no running statistics leak between quantities."""
        model = DenseNet(case.config, memory_efficient=case.memory_efficient)
        model.to(device=device, dtype=dtype, memory_format=memory_format)
        from_canonical(model, case.params)
        return model

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device).contiguous(
            memory_format=memory_format
        )

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64)).to(device)

    x, y = images(case.x), labels(case.y)
    results: dict[str, np.ndarray] = {}
    for mode in ("eval", "train"):
        if mode in case.quantities:
            model = fresh_model().train(mode == "train")
            with torch.no_grad():
                features = model.forward_features(x)
            results |= {f"{mode}/{k}": _numpy(v) for k, v in features.items()}
            results[f"loss/{mode}"] = _numpy(loss_fn(features["logits"], y).reshape(1))
    if "grad" in case.quantities:
        _, grad_input, _ = gradients(fresh_model(), x, y, training=False)
        results["eval_grad/input"] = _numpy(grad_input)
        _, grad_input, grads = gradients(fresh_model(), x, y, training=True)
        results["train_grad/input"] = _numpy(grad_input)
        results |= {f"train_grad/{k}": _numpy(g) for k, g in grads.items()}
    if "step" in case.quantities:
        model = fresh_model()
        optimizer = make_optimizer(model, case.sgd)
        for k in range(case.steps):
            train_step(model, optimizer, images(case.step_x[k]), labels(case.step_y[k]))
        results |= {f"step/{k}": v for k, v in to_canonical(model).items()}
    return {k: results[k] for k in result_keys(case)}, info
