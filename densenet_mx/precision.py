"""MXNet's precision and determinism switches for a parity run, and the oneDNN max-pool probe.

All are environment variables that MXNet reads when an operator first needs them, so
adapter.environment sets them before any operator runs in the process.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet import autograd, nd

from densenet_spec.errors import DeviceUnavailableError

DTYPES = ("float32", "float64")


def precision_settings(device: str, dtype: str) -> dict[str, str]:
    """The settings for a parity run on device, by name; pure (needs neither the device nor any
    change to the process), so it is testable on CPU."""
    if dtype not in DTYPES:
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


def max_pool_eval_grad_is_correct() -> bool:
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
