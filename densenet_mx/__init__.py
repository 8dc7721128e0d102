"""DenseNet in MXNet Gluon (1.9): the fourth framework package of densenet-parity.

Quick start (the same five lines in every densenet_* package; MXNet's layout is NCHW):

    from densenet_mx import from_preset, from_nchw, load, predict
    model = from_preset("d2l")
    load(model, "weights.safetensors")
    logits = predict(model, from_nchw(images))

The teaching files: layers.py (blocks), model.py (DenseNet), weights.py (canonical weights),
train.py (loss, SGD, steps). variants.py builds the "plain" and "fast" models; api.py the shared
small API; adapter.py runs parity cases and training jobs. Beside them, machinery a reader may
skip: running_stats.py (the spec's running-statistic rule from MXNet's BatchNorm kernel),
max_pool.py (a max-pool that propagates NaN), sgd.py (the spec's SGD buffer, float64 in double),
inputs.py (named errors for bad batches), precision.py (parity settings), canonical.py
(canonical parameter names).
MXNet 1.9.1 imports only with numpy < 1.24: it runs in its own environment (.venvs/mx).
"""

from densenet_mx.api import (
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
