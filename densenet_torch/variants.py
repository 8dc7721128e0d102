"""The model variants the harness and the benchmarks build: the teaching model or the fast one."""

from __future__ import annotations

import torch

from densenet_spec.config import DenseNetConfig, check_float_dtype
from densenet_spec.errors import UnknownVariantError
from densenet_spec.frameworks import VARIANTS
from densenet_torch.layers import DenseBlock
from densenet_torch.memory_efficient import MemoryEfficientDenseBlock
from densenet_torch.model import DenseNet

# What the fast variant changes, recorded in the adapter's info.
FAST_PATHS = ("channels_last",)


def make_model(
    config: DenseNetConfig,
    variant: str = "plain",
    memory_efficient: bool = False,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> DenseNet:
    """A DenseNet for `config` on `device` in `dtype` (torch's defaults when None; a torch dtype or
    its name: float32 or float64, anything else is a DTypeError before the model is built).

    "plain": DenseNet(config), the model of layers.py and model.py (contiguous NCHW tensors).
    "fast": the same modules and weights in the channels_last memory format (NHWC strides, the
    logical shape stays NCHW), on CPU (oneDNN) and GPU (cuDNN) alike: both backends' convolution
    and BatchNorm kernels run faster on it, and a contiguous input is answered in channels_last
    from the first convolution on. The numbers are the plain model's (proven by the harness).
    torch.compile is not part of it: the benchmarks measure compilation as an execution mode.
    memory_efficient: MemoryEfficientDenseBlock (checkpointed dense layers) in every dense block.
    """
    if dtype is not None:
        dtype = getattr(torch, check_float_dtype(dtype, "model"))
    if variant not in VARIANTS:
        raise UnknownVariantError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    dense_block = MemoryEfficientDenseBlock if memory_efficient else DenseBlock
    model = DenseNet(config, dense_block=dense_block)
    memory_format = torch.channels_last if variant == "fast" else torch.contiguous_format
    return model.to(device=device, dtype=dtype, memory_format=memory_format)
