"""DenseNet in JAX: Flax NNX modules, Optax SGD, channels last (NHWC) inside the model.

Quick start (the same five lines in every densenet_* package; JAX's layout here is NHWC):

    from densenet_jax import from_preset, from_nchw, load, predict
    model = from_preset("d2l")
    load(model, "weights.safetensors")
    logits = predict(model, from_nchw(images))

The teaching files: layers.py (blocks), model.py (DenseNet), weights.py (canonical weights),
train.py (loss, SGD, steps). variants.py builds the "plain" and "fast" models; api.py the shared
small API; adapter.py runs parity cases and training jobs. Beside them, machinery a reader may
skip: batchnorm.py (the spec's running-statistics rule), memory_efficient.py (recomputed dense
layers), xla_cpu.py (fast XLA:CPU kernels), inputs.py (named errors for bad batches), sgd.py
(momentum buffers in canonical names), precision.py (parity settings).
"""

from densenet_jax.api import (
    LAYOUT,
    DenseNet,
    from_file,
    from_nchw,
    from_preset,
    load,
    make_model,
    predict,
    save,
)

__all__ = [
    "DenseNet",
    "make_model",
    "from_preset",
    "from_file",
    "save",
    "load",
    "predict",
    "from_nchw",
    "LAYOUT",
]
