"""Run one parity case (densenet_spec.case.Case) with the PyTorch DenseNet.

Called by `python -m densenet_spec.worker torch <case folder> <result file>` in the torch
environment. torch's native layout (NCHW) and parameter layout are the canonical ones, so
results only need .numpy(); channels_last changes strides, not the logical NCHW shape.
"""

from __future__ import annotations

import os
import platform
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from densenet_spec.case import Case, result_keys
from densenet_spec.config import same_pads
from densenet_spec.errors import DeviceUnavailableError
from densenet_torch.model import DenseNet
from densenet_torch.train import gradients, loss_fn, make_optimizer, train_step
from densenet_torch.weights import from_canonical, to_canonical

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _precision_settings(device: str, dtype: str) -> dict:
    """The precision and determinism settings environment() applies for a parity run on device,
    by name; pure (needs neither the device nor any change to the process), so it is testable
    on CPU. environment() applies exactly these, through _SETTINGS, and records them read back."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    if device == "cpu":
        return {"torch.use_deterministic_algorithms": True}
    if device == "gpu":
        return {
            # cuBLAS needs a fixed workspace for reproducible matmuls; read when cuBLAS starts.
            "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
            "torch.backends.cuda.matmul.allow_tf32": False,  # parity: TF32 rounds to 10 bits
            "torch.backends.cudnn.allow_tf32": False,  # parity: likewise for convolutions
            "torch.backends.cudnn.deterministic": True,
            "torch.backends.cudnn.benchmark": False,  # autotuning may pick another kernel per run
            # warn_only: an op without a deterministic CUDA kernel warns instead of failing.
            "torch.use_deterministic_algorithms": "warn_only",
        }
    if device == "tpu":
        raise DeviceUnavailableError(
            "torch: no tpu device (torch/XLA is not supported by densenet_torch)"
        )
    raise DeviceUnavailableError(f"torch: unknown device {device!r} (cpu, gpu, tpu)")


def _set_deterministic(value) -> None:
    """True, "warn_only" or False, as _deterministic() reads it back."""
    torch.use_deterministic_algorithms(bool(value), warn_only=value == "warn_only")


def _deterministic():
    if not torch.are_deterministic_algorithms_enabled():
        return False
    return "warn_only" if torch.is_deterministic_algorithms_warn_only_enabled() else True


# name -> (apply the value, read it back): the only way environment() changes a setting.
_SETTINGS = {
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
    "torch.use_deterministic_algorithms": (_set_deterministic, _deterministic),
}


def environment(device: str, dtype: str) -> dict:
    """Apply the device and precision settings for a parity run; return what was applied."""
    settings = _precision_settings(device, dtype)  # also rejects unknown dtypes and devices
    versions = {"torch": torch.__version__, "numpy": np.__version__}
    if device == "gpu":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise DeviceUnavailableError(
                f"torch: no gpu device (torch.cuda.is_available() is False; torch "
                f"{torch.__version__} is {build})"
            )
        versions |= {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
        device_name = torch.cuda.get_device_name()
    else:
        device_name = platform.processor() or platform.machine()
    for name, value in settings.items():
        _SETTINGS[name][0](value)
    return {
        "device": device,
        "device_name": device_name,
        "dtype": dtype,
        "precision": {name: _SETTINGS[name][1]() for name in settings},  # read back
        "num_threads": torch.get_num_threads(),
        "versions": versions,
    }



def _apply_mutation(model: DenseNet, kind: str, height: int, width: int) -> None:
    """Self-check hook (harness --mutate torch:same_padding): the ImageNet stem's 7x7/2 conv and
    3x3/2 max-pool pad the TF/XLA 'same' way, (2, 3) and (0, 1) on even sizes instead of the
    spec's (3, 3) and (1, 1): the d2l JAX/TF tabs' mistake. Weights and names are unchanged."""
    if kind != "same_padding":
        raise ValueError(
            f"torch: unknown mutation {kind!r}; known: same_padding (bn_eps comes in the config)"
        )
    if model.config.stem != "imagenet":
        raise ValueError(
            "torch: same_padding changes the strided ImageNet stem; this config has none"
        )
    conv_h, conv_w = same_pads(height, 7, 2), same_pads(width, 7, 2)
    pool_h, pool_w = same_pads(-(-height // 2), 3, 2), same_pads(-(-width // 2), 3, 2)
    stem = model.stem
    stem.conv.padding = (0, 0)
    stem.pool.padding = 0
    model.stem = nn.Sequential(
        OrderedDict(
            pad=nn.ZeroPad2d((*conv_w, *conv_h)),  # (left, right, top, bottom)
            conv=stem.conv,
            norm=stem.norm,
            relu=stem.relu,
            pool_pad=nn.ConstantPad2d((*pool_w, *pool_h), float("-inf")),
            pool=stem.pool,
        )
    )


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def run_case(case: Case) -> tuple[dict, dict]:
    """Fill every key of densenet_spec.case.result_keys(case); return (results, info).

    case.options: "channels_last" (NHWC strides, same numbers), "threads" (CPU intra-op threads;
    torch's default is one per core, which oversubscribes a machine shared with other jobs).
    """
    mutation = case.options.get("mutate")
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
        if mutation is not None:
            _apply_mutation(model, mutation, *case.x.shape[2:])
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
