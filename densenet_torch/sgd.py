"""torch.optim.SGD's momentum buffers in canonical names (densenet_spec.training's checkpoints).

torch keeps the spec's buffer as written (buf = m * buf + (g + wd * p); p -= lr * buf, the rate
outside the buffer), one per Parameter in optimizer.state[p]["momentum_buffer"], created by the
first step. So reading and writing them is a renaming; a new rate is param_groups' "lr" and needs
no conversion. With momentum 0 torch keeps no buffer (the trajectory does not depend on one):
spec_buffers then reports zeros.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from densenet_spec.errors import OptimizerStateError
from densenet_spec.params import check_momentum_buffers, trainable_names

BUFFER = "momentum_buffer"  # torch.optim.SGD's state key


def spec_buffers(model: nn.Module, optimizer: torch.optim.SGD) -> dict[str, np.ndarray]:
    """Every trainable canonical name -> its momentum buffer (canonical layout, the model's dtype;
    zeros before the first step)."""
    out = {}
    for name, param in _trainable(model, optimizer).items():
        buf = optimizer.state.get(param, {}).get(BUFFER)
        buf = torch.zeros_like(param) if buf is None else buf
        out[name] = buf.detach().cpu().contiguous().numpy().copy()
    return out


def load_spec_buffers(model: nn.Module, optimizer: torch.optim.SGD, buffers: dict) -> None:
    """The inverse of spec_buffers: the next optimizer.step continues from `buffers` (from any
    framework; converted to each parameter's dtype, device and memory format)."""
    params = _trainable(model, optimizer)
    check_momentum_buffers(buffers, model.config)
    for name, param in params.items():
        value = torch.from_numpy(np.ascontiguousarray(buffers[name]))
        buf = torch.empty_like(param, memory_format=torch.preserve_format)
        with torch.no_grad():
            buf.copy_(value)
        optimizer.state[param][BUFFER] = buf


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The rate of the next step (the buffers do not hold it)."""
    for group in optimizer.param_groups:
        group["lr"] = float(lr)


def _trainable(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, nn.Parameter]:
    """Trainable canonical name -> the Parameter (torch's names are the canonical ones), each one
    the optimizer steps."""
    named = dict(model.named_parameters())
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    params = {name: named[name] for name in trainable_names(model.config)}
    absent = [name for name, p in params.items() if id(p) not in stepped]
    if absent:
        raise OptimizerStateError(f"the optimizer does not step {', '.join(absent[:4])}")
    return params
