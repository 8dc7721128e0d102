"""DenseNet in PyTorch: the reference framework package of densenet-parity.

Quick start (the same five lines in every densenet_* package; torch's layout is NCHW):

    from densenet_torch import from_preset, from_nchw, load, predict
    model = from_preset("d2l")
    load(model, "weights.safetensors")
    logits = predict(model, from_nchw(images))

The teaching files: layers.py (blocks), model.py (DenseNet), weights.py (canonical weights),
train.py (loss, SGD, steps). variants.py builds the "plain" and "fast" models; api.py the shared
small API; adapter.py runs parity cases and training jobs. Beside them, machinery a reader may
skip: batchnorm.py (the spec's biased running-variance rule), memory_efficient.py (checkpointed
dense block), inputs.py (named errors for bad batches), sgd.py (momentum buffers in canonical
names), precision.py (parity settings). torch's NCHW / OIHW layout is the canonical one.
"""

from densenet_torch.api import (
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
