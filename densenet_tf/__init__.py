"""DenseNet in TensorFlow with Keras 3 layers (NHWC inside), checked against the NumPy oracle.

Quick start (the same five lines in every densenet_* package; TensorFlow's layout is NHWC):

    from densenet_tf import from_preset, from_nchw, load, predict
    model = from_preset("d2l")
    load(model, "weights.safetensors")
    logits = predict(model, from_nchw(images))

The teaching files: layers.py (blocks), model.py (DenseNet), weights.py (canonical weights),
train.py (loss, SGD, steps). variants.py builds the "plain" and "fast" models; api.py the shared
small API; adapter.py runs parity cases and training jobs. Beside them, machinery a reader may
skip: batchnorm.py (the spec's running variance), max_pool.py (a max-pool that propagates NaN),
sgd.py (the spec's SGD buffer under a schedule), inputs.py (named errors for bad batches),
memory_efficient.py, precision.py (parity settings), canonical.py (canonical parameter names).

The public names below are imported on first use, not here: TensorFlow reads
TF_ENABLE_ONEDNN_OPTS once, when it is imported, and densenet_tf.adapter must set it first
(`import densenet_tf.adapter` runs this file before the adapter's own first line).
"""

import importlib
import os

# Keras 3 picks its backend once, at import: this package is the TensorFlow one.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

_EXPORTS = {
    "DenseNet": "api",
    "make_model": "api",
    "from_preset": "api",
    "from_file": "api",
    "save": "api",
    "load": "api",
    "predict": "api",
    "from_nchw": "api",
    "LAYOUT": "api",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"densenet_tf.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'densenet_tf' has no attribute {name!r}")
