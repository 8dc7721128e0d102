"""Our DenseNet in TensorFlow / Keras 3 (plain or fast model), stepped by densenet_tf.train
(tf.function; XLA opt-in)."""

from __future__ import annotations

import os

import tensorflow as tf

from densenet_bench.timing import Prepared, Request, Unsupported, synthetic_batch
from densenet_spec.case import SGDConfig
from densenet_tf import train
from densenet_tf.variants import make_model

# function: train.py's tf.function steps with the model's own jit_compile (False for the plain
# model; the fast one leaves it to Keras, which turns XLA on only on a GPU: then it is recorded as
# xla); xla: the same steps with jit_compile=True
VARIANTS = ("function", "xla")


def prepare(req: Request) -> Prepared:
    threads = _threads(req)  # before TensorFlow starts its runtime
    device_name, peak = _device(req)
    with tf.device(device_name):
        model = make_model(req.densenet_config(), req.model, req.memory_efficient)
        jit = True if req.variant == "xla" else None  # None: the model's model.jit_compile
        x, y = synthetic_batch(req, "NHWC")
        x, y = tf.constant(x), tf.constant(y)
        if req.mode == "infer":
            step = lambda: train.eval_step(model, x, jit_compile=jit)  # noqa: E731
        else:
            optimizer = train.make_optimizer(model, SGDConfig())
            step = lambda: train.train_step(model, optimizer, x, y, jit_compile=jit)  # noqa: E731
    return Prepared(
        step=step,
        sync=lambda out: out.numpy(),  # waits for the function, updates included
        info={
            "versions": {"tensorflow": tf.__version__, "keras": _keras_version()},
            "threads": threads,
            "device_name": device_name,
            "variant": "xla" if jit or bool(model.jit_compile) else "function",  # as run
        },
        device_peak_bytes=peak,
    )


def _device(req: Request):
    """(device name, peak-bytes reader); raises Unsupported when the device is absent."""
    if req.device == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            raise Unsupported("TensorFlow sees no GPU")
        return "/GPU:0", lambda: tf.config.experimental.get_memory_info("GPU:0")["peak"]
    return "/CPU:0", lambda: None


def _threads(req: Request) -> dict:
    if req.threads:
        tf.config.threading.set_intra_op_parallelism_threads(req.threads)
    return {  # 0 means "as many as the machine has"
        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
    }


def _keras_version() -> str:
    import keras

    return keras.__version__
