"""keras.applications.DenseNet121 (and 169/201), random weights, Keras's own compile/fit path.

The same file serves the TensorFlow backend (peer of densenet_tf) and the JAX backend (peer of
densenet_jax); KERAS_BACKEND is set by the CLI. Keras ships no DenseNet-161.
"""

from __future__ import annotations

import keras

from densenet_bench.timing import Prepared, Request, Unsupported, official_preset, synthetic_batch
from densenet_spec.case import SGDConfig

# TensorFlow backend: function (tf.function, Keras's default) and xla (jit_compile=True);
# JAX backend: Keras always compiles with jax.jit.
VARIANTS = ("function", "xla", "jit")
BUILDERS = {
    "densenet121": keras.applications.DenseNet121,
    "densenet169": keras.applications.DenseNet169,
    "densenet201": keras.applications.DenseNet201,
}


def prepare(req: Request) -> Prepared:
    backend = keras.backend.backend()
    wanted = ("jit",) if backend == "jax" else ("function", "xla")
    if req.variant not in wanted:
        raise Unsupported(f"Keras on {backend} runs variants {wanted}, not {req.variant!r}")
    if req.memory_efficient:
        raise Unsupported("keras.applications' DenseNet has no memory-efficient mode")
    name = official_preset(req)
    if name not in BUILDERS:
        raise Unsupported(f"keras.applications has no {name}")
    if req.image_size < 32:
        raise Unsupported("keras.applications needs images of at least 32x32")
    threads = _threads(req, backend)  # before the backend starts its runtime
    device_name, peak = _device(req, backend)
    model = BUILDERS[name](
        weights=None,  # never download weights
        input_shape=(req.image_size, req.image_size, 3),
        classes=1000,
        classifier_activation=None,  # logits, as ours
    )
    sgd = SGDConfig()
    model.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=req.variant in ("xla", "jit"),
    )
    x, y = synthetic_batch(req, "NHWC")
    if req.mode == "infer":
        step = lambda: model.predict_on_batch(x)  # noqa: E731  (returns numpy: synchronised)
    else:
        step = lambda: model.train_on_batch(x, y)  # noqa: E731  (returns the loss as a float)
    return Prepared(
        step=step,
        sync=lambda out: None,
        info={
            "versions": {"keras": keras.__version__, backend: _backend_version(backend)},
            "threads": threads,
            "device_name": device_name,
        },
        device_peak_bytes=peak,
    )


def _device(req: Request, backend: str):
    """(device name, peak-bytes reader); raises Unsupported when the device is absent."""
    if backend == "jax":
        import jax

        try:
            dev = jax.devices("gpu" if req.device == "gpu" else "cpu")[0]
        except RuntimeError as e:
            raise Unsupported(f"jax has no {req.device} device: {e}") from None
        return f"{dev.platform}:{dev.device_kind}", lambda: (dev.memory_stats() or {}).get(
            "peak_bytes_in_use"
        )
    import tensorflow as tf

    if req.device == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            raise Unsupported("TensorFlow sees no GPU")
        return "GPU:0", lambda: tf.config.experimental.get_memory_info("GPU:0")["peak"]
    tf.config.set_visible_devices([], "GPU")
    return "cpu", lambda: None


def _threads(req: Request, backend: str) -> dict:
    if backend == "jax":
        import os

        return {"xla_flags": os.environ.get("XLA_FLAGS", "")}
    import tensorflow as tf

    if req.threads:
        tf.config.threading.set_intra_op_parallelism_threads(req.threads)
    return {  # 0 means "as many as the machine has"
        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def _backend_version(backend: str) -> str:
    if backend == "jax":
        import jax

        return jax.__version__
    import tensorflow as tf

    return tf.__version__
