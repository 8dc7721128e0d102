"""Run one parity case (densenet_spec.case.Case) with the MXNet Gluon DenseNet.

Called by `python -m densenet_spec.worker mx <case folder> <result file>` in the mx environment
(MXNet 1.9.1 needs numpy < 1.24). Gluon's NCHW / OIHW layout is the canonical one, so results
only need .asnumpy(). MXNet reads its switches from environment variables the first time an
operator needs them, so environment() sets them before any operator runs in this process.
"""

from __future__ import annotations

import os
import platform

import mxnet as mx
import numpy as np
from mxnet import autograd, nd
from mxnet.gluon import nn

from densenet_spec.case import Case
from densenet_spec.config import same_pads
from densenet_spec.errors import DeviceUnavailableError
from densenet_mx.model import DenseNet
from densenet_mx.train import gradients, loss_fn, make_optimizer, train_step
from densenet_mx.weights import from_canonical, to_canonical

_DTYPES = ("float32", "float64")


def _max_pool_eval_grad_is_correct() -> bool:
    """MXNet 1.9's oneDNN (MKLDNN) max-pool backward after an eval-mode forward is wrong.

    The pool has no train/eval difference, and its train-mode gradient is right, so the two
    must agree. A float32 probe on 6x6 (float64 never takes the oneDNN kernel).
    """
    pool = mx.gluon.nn.MaxPool2D(pool_size=3, strides=2, padding=1)
    x = nd.array(np.random.default_rng(0).standard_normal((1, 2, 6, 6)), dtype="float32")
    g = nd.array(np.arange(1, 19).reshape(1, 2, 3, 3), dtype="float32")
    grads = []
    for train_mode in (True, False):
        x.attach_grad()
        with autograd.record(train_mode=train_mode):
            y = pool(x)
        y.backward(g)
        grads.append(x.grad.asnumpy())
    return bool(np.array_equal(grads[0], grads[1]))


def _precision_settings(device: str, dtype: str) -> dict:
    """The precision and determinism settings for a parity run on device, by name; pure (needs
    neither the device nor any change to the process), so it is testable on CPU. All are
    environment variables that MXNet reads when an operator first needs them; environment()
    sets exactly these and records them read back."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    if device == "cpu":
        # parity: oneDNN's max-pool backward is wrong after an eval-mode forward (MXNet 1.9.1),
        # so the eval-mode input gradient would be; read when the first operator runs.
        return {"MXNET_MKLDNN_ENABLED": "0"}
    if device == "gpu":
        return {
            "NVIDIA_TF32_OVERRIDE": "0",  # parity: no TF32 rounding in cuBLAS / cuDNN
            "MXNET_CUDNN_AUTOTUNE_DEFAULT": "0",  # a fixed cuDNN algorithm, no autotune
            "MXNET_ENFORCE_DETERMINISM": "1",  # deterministic cuDNN algorithms only
        }
    if device == "tpu":
        raise DeviceUnavailableError("mx: no tpu device (MXNet has no TPU backend)")
    raise DeviceUnavailableError(f"mx: unknown device {device!r} (cpu, gpu, tpu)")


def environment(device: str, dtype: str) -> dict:
    """Apply the device and precision settings for a parity run; return what was applied."""
    settings = _precision_settings(device, dtype)  # also rejects unknown dtypes and devices
    versions = {"mxnet": mx.__version__, "numpy": np.__version__}
    os.environ.update(settings)  # before the availability check, as before any operator
    precision = {name: os.environ[name] for name in settings}  # read back
    if device == "cpu":
        # Each operator that falls back to the plain CPU kernel would log a warning.
        os.environ.setdefault("MXNET_STORAGE_FALLBACK_LOG_VERBOSE", "0")
        precision["max_pool_eval_grad_correct"] = _max_pool_eval_grad_is_correct()
        device_name = platform.processor() or platform.machine()
    else:  # gpu
        if mx.context.num_gpus() == 0:
            cuda = mx.runtime.Features().is_enabled("CUDA")
            build = "a CUDA build" if cuda else "a CPU-only build"
            raise DeviceUnavailableError(
                f"mx: no gpu device (mx.context.num_gpus() is 0; mxnet {mx.__version__} is {build})"
            )
        versions["cudnn"] = mx.runtime.Features().is_enabled("CUDNN")
        device_name = "gpu(0)"
    return {
        "device": device,
        "device_name": device_name,
        "dtype": dtype,
        "precision": precision,
        "versions": versions,
    }



class _Pad(nn.HybridBlock):
    """Constant padding of H and W by ((top, bottom), (left, right)); no parameters."""

    def __init__(self, pads, value: float):
        super().__init__()
        (top, bottom), (left, right) = pads
        self._pad_width = (0, 0, 0, 0, top, bottom, left, right)
        self._value = value

    def hybrid_forward(self, F, x):
        return F.pad(x, mode="constant", pad_width=self._pad_width, constant_value=self._value)


def _apply_mutation(model: DenseNet, kind: str, height: int, width: int) -> None:
    """Self-check hook (harness --mutate mx:same_padding): the ImageNet stem's 7x7/2 conv and
    3x3/2 max-pool pad the TF/XLA 'same' way, (2, 3) and (0, 1) on even sizes instead of the
    spec's (3, 3) and (1, 1): the d2l JAX/TF tabs' mistake. Gluon pads symmetrically only, so
    the stem gets two parameterless pad blocks and its conv and pool pad 0; weights unchanged.
    Call before hybridize() (the stem's graph is traced once)."""
    if kind != "same_padding":
        raise ValueError(
            f"mx: unknown mutation {kind!r}; known: same_padding (bn_eps comes in the config)"
        )
    if model.config.stem != "imagenet":
        raise ValueError("mx: same_padding changes the strided ImageNet stem; this config has none")
    stem = model.stem
    stem.pad = _Pad((same_pads(height, 7, 2), same_pads(width, 7, 2)), 0.0)
    # zeros, not -inf, before the max-pool: its input is post-ReLU (>= 0), as in densenet_tf
    stem.pool_pad = _Pad((same_pads(-(-height // 2), 3, 2), same_pads(-(-width // 2), 3, 2)), 0.0)
    stem.conv._kwargs["pad"] = (0, 0)
    stem.pool._kwargs["pad"] = (0, 0)
    stem._order = ("pad", "conv", "norm", "relu", "pool_pad", "pool")


def run_case(case: Case) -> tuple[dict, dict]:
    """Fill every key of densenet_spec.case.result_keys(case); return (results, info)."""
    info = environment(case.device, case.dtype)
    if (
        "grad" in case.quantities
        and case.config.stem == "imagenet"
        and info["precision"].get("max_pool_eval_grad_correct") is False
    ):
        raise RuntimeError(
            "mx: oneDNN is active in this process (an operator ran before MXNET_MKLDNN_ENABLED=0 "
            "was set) and its max-pool gradient after an eval-mode forward is wrong; run the "
            "worker in a fresh process or set MXNET_MKLDNN_ENABLED=0 before MXNet starts"
        )
    ctx = mx.gpu(0) if case.device == "gpu" else mx.cpu()
    hybridize = bool(case.options.get("hybridize", True))
    info |= {"memory_efficient": case.memory_efficient, "hybridize": hybridize}

    model = DenseNet(case.config, memory_efficient=case.memory_efficient)
    model.initialize(ctx=ctx)
    model.cast(case.dtype)
    if "mutate" in case.options:
        _apply_mutation(model, case.options["mutate"], *case.x.shape[2:])
    if hybridize:
        model.hybridize()

    def reload() -> DenseNet:
        """The case's weights: no running statistics leak between quantities."""
        from_canonical(model, case.params)
        return model

    def images(a: np.ndarray) -> nd.NDArray:
        return nd.array(a, ctx=ctx, dtype=case.dtype)

    def labels(a: np.ndarray) -> nd.NDArray:
        return nd.array(a, ctx=ctx, dtype="int64")

    x, y = images(case.x), labels(case.y)
    results: dict[str, np.ndarray] = {}
    for mode in ("eval", "train"):
        if mode in case.quantities:
            with autograd.train_mode() if mode == "train" else autograd.predict_mode():
                features = reload().forward_features(x)
            results |= {f"{mode}/{k}": v.asnumpy() for k, v in features.items()}
            results[f"loss/{mode}"] = loss_fn(features["logits"], y).asnumpy().reshape(1)
    if "grad" in case.quantities:
        _, grad_input, _ = gradients(reload(), x, y, training=False)
        results["eval_grad/input"] = grad_input.asnumpy()
        _, grad_input, grads = gradients(reload(), x, y, training=True)
        results["train_grad/input"] = grad_input.asnumpy()
        results |= {f"train_grad/{k}": g.asnumpy() for k, g in grads.items()}
    if "step" in case.quantities:
        trainer = make_optimizer(reload(), case.sgd)
        for k in range(case.steps):
            train_step(model, trainer, images(case.step_x[k]), labels(case.step_y[k]))
        results |= {f"step/{k}": v for k, v in to_canonical(model).items()}
    return results, info
