"""The small API every densenet_* package shares (the same names in all four):

    model = from_preset("d2l")                    # or from_file("weights.safetensors")
    load(model, "weights.safetensors")
    logits = predict(model, from_nchw(images))    # images: NumPy, NCHW

torch's layout is NCHW (LAYOUT), so from_nchw only wraps the array in a tensor. torch runs
eagerly: predict is torch.no_grad() in eval mode (torch.compile is opt-in, not used here).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from densenet_spec import weightfile
from densenet_spec.config import check_float_dtype, get_preset
from densenet_torch.inputs import check_input
from densenet_torch.model import DenseNet
from densenet_torch.variants import make_model
from densenet_torch.weights import from_canonical, load_weights, save_weights

LAYOUT = "NCHW"


def from_preset(
    name: str,
    *,
    variant: str = "plain",
    memory_efficient: bool = False,
    dtype: str | torch.dtype = "float32",
    device: torch.device | str | None = None,
    **overrides,
) -> DenseNet:
    """The preset's DenseNet (config fields replaced by `overrides`) on device (default CPU) in
    dtype, freshly initialised: ready to load weights and predict."""
    dtype = check_float_dtype(dtype, "model")  # before the preset is even read
    config = get_preset(name).replace(**overrides)
    return make_model(config, variant, memory_efficient, device=device, dtype=dtype)


def from_file(
    path: str | os.PathLike,
    *,
    variant: str = "plain",
    dtype: str | torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> DenseNet:
    """A DenseNet built from the config stored in a weight file, with its weights loaded.

    dtype defaults to the file's; another float dtype converts the weights."""
    if dtype is not None:
        dtype = check_float_dtype(dtype, "model")
    tensors, config = weightfile.load_weights(path)  # validated: names, shapes, values
    dtype = check_float_dtype(dtype or next(iter(tensors.values())).dtype, "model")
    model = make_model(config, variant, device=device, dtype=dtype)
    from_canonical(model, {k: np.asarray(v, dtype) for k, v in tensors.items()})
    return model


def save(model: DenseNet, path: str | os.PathLike) -> None:
    """Write the model's canonical weights (running statistics included) to a weight file."""
    save_weights(model, path)


def load(model: DenseNet, path: str | os.PathLike) -> None:
    """Load a weight file written for this config and dtype into the model."""
    load_weights(model, path)


def predict(model: DenseNet, x: torch.Tensor) -> torch.Tensor:
    """Logits in eval mode for an NCHW batch, without autograd; every module's train/eval mode
    is left as it was."""
    check_input(model, x, training=False)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for module, training in modes:
            module.training = training


def from_nchw(x: np.ndarray, *, device: torch.device | str | None = None) -> torch.Tensor:
    """An NCHW NumPy batch as a tensor on device (default CPU), its dtype kept."""
    return torch.from_numpy(np.array(x, copy=True)).to(device)
