"""The model variants that the benchmarks and the parity harness build (frameworks.VARIANTS).

plain: DenseNet(config), stepped by tf.function without XLA (model.jit_compile = False).
fast:  the same model; TensorFlow has no faster model-level path for it (Keras 3's TF backend has
       no fused BatchNorm; cuDNN convolutions are what the plain model runs already), so its fast
       path is the execution setting: XLA (jit_compile) where Keras's own jit_compile="auto"
       turns it on, i.e. on a GPU with op determinism off. On a CPU-only machine fast == plain
       (XLA:CPU measured slower for this model; docs and benchmarks/README.md).
memory_efficient injects memory_efficient.MemoryEfficientDenseBlock in either variant.
"""

from __future__ import annotations

import contextlib

import keras

from densenet_spec.config import DenseNetConfig, check_float_dtype
from densenet_spec.errors import UnknownVariantError
from densenet_spec.frameworks import VARIANTS
from densenet_tf.layers import DenseBlock
from densenet_tf.memory_efficient import MemoryEfficientDenseBlock
from densenet_tf.model import DenseNet


def make_model(
    config: DenseNetConfig,
    variant: str = "plain",
    memory_efficient: bool = False,
    *,
    dtype: str = "float32",
) -> DenseNet:
    """The DenseNet of `variant`, every layer, weight and running statistic in `dtype`.

    "plain" is DenseNet(config) with XLA off; "fast" leaves model.jit_compile to Keras's "auto"
    rule (XLA on a GPU, unless op determinism is on; off on CPU-only machines, so there
    fast == plain). model.jit_compile is what train.train_step and eval_step use by default.
    Another variant raises UnknownVariantError, a dtype other than float32 / float64
    DTypeError (before anything is built).
    """
    dtype = check_float_dtype(dtype, "model")
    if variant not in VARIANTS:
        raise UnknownVariantError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    dense_block = MemoryEfficientDenseBlock if memory_efficient else DenseBlock
    with _dtype_policy(dtype):
        model = DenseNet(config, dense_block=dense_block)
    if variant == "plain":
        model.jit_compile = False
    return model


@contextlib.contextmanager
def _dtype_policy(dtype: str):
    """Build layers in `dtype`: Keras layers take the global dtype policy at construction."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
