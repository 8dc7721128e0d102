"""Named errors for a batch before torch sees it (issue 17): the spec's checks at torch's edge.

torch's own errors for these come late and name its internals ("conv2d() received an invalid
combination of arguments", "Input type (double) and bias type (float) should be the same"), and a
train step must refuse bad labels before its forward pass changes any running statistic: the
cross-entropy kernel raises on a label out of range only after the BatchNorms have updated.
"""

from __future__ import annotations

import torch
from torch import nn

from densenet_spec import config as spec
from densenet_spec.errors import DTypeError, LabelError


def model_dtype(model: nn.Module) -> str:
    """The dtype the model's parameters hold (DTypeError unless float32 or float64)."""
    return spec.check_float_dtype(next(model.parameters()).dtype, "model")


def check_input(model: nn.Module, x, training: bool | None = None) -> None:
    """A batch the model can run: an NCHW torch.Tensor of the model's float dtype and a shape the
    network accepts (spec.check_input_shape; training=None reads model.training)."""
    if not isinstance(x, torch.Tensor):
        raise DTypeError(
            f"input must be a torch.Tensor (NCHW), got {type(x).__module__}.{type(x).__name__}"
            "; convert with torch.from_numpy(x) or densenet_torch.from_nchw(x)"
        )
    want = model_dtype(model)  # a half() model is named as such, whatever the input
    got = spec.check_float_dtype(x.dtype, "input")
    if got != want:
        raise DTypeError(f"input dtype {got} differs from the model's {want}; cast the input")
    training = model.training if training is None else training
    spec.check_input_shape(model.config, x.shape, "NCHW", training=training)


def check_labels(model: nn.Module, y, batch: int) -> None:
    """Integer class indices, one per image, in range (spec.check_labels, LabelError)."""
    if not isinstance(y, torch.Tensor):
        raise LabelError(
            f"labels must be a torch.Tensor of integer class indices, got "
            f"{type(y).__module__}.{type(y).__name__}; convert with torch.as_tensor(y)"
        )
    spec.check_labels(model.config, y.detach().cpu(), batch)  # on the host: dtype and values


def check_batch(model: nn.Module, x, y, training: bool) -> None:
    """check_input and check_labels: what a train step or a gradient call runs first."""
    check_input(model, x, training)
    check_labels(model, y, x.shape[0])
