"""DenseNet in TensorFlow with Keras 3 layers (NHWC inside), checked against the NumPy oracle.

The public names below are imported on first use, not here: TensorFlow reads
TF_ENABLE_ONEDNN_OPTS once, when it is imported, and densenet_tf.adapter must set it first
(`import densenet_tf.adapter` runs this file before the adapter's own first line).
"""

import importlib
import os

# Keras 3 picks its backend once, at import: this package is the TensorFlow one.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

_EXPORTS = {
    "batch_norm": "layers",
    "conv_block": "layers",
    "DenseBlock": "layers",
    "transition_block": "layers",
    "bottleneck_block": "layers",
    "DenseNet": "model",
    "to_canonical": "weights",
    "from_canonical": "weights",
    "save_weights": "weights",
    "load_weights": "weights",
    "make_model": "variants",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"densenet_tf.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'densenet_tf' has no attribute {name!r}")
