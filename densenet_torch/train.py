"""Loss, the spec's SGD, one train step, an eval step, gradients for the parity check.

torch runs eagerly: that is its standard way (torch.compile is opt-in and not used here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from densenet_spec.case import SGDConfig
from densenet_spec.params import trainable_names
from densenet_torch.inputs import check_batch


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch (labels: class indices of any integer dtype)."""
    return F.cross_entropy(logits, labels.long())  # torch's kernel takes int64 indices


def make_optimizer(model: nn.Module, sgd: SGDConfig) -> torch.optim.SGD:
    """torch.optim.SGD is the spec's update as written: buf = m * buf + (g + wd * p), p -= lr * buf.

    Its first step sets buf = g + wd * p, the same as a zero-initialised buffer; dampening 0 and
    nesterov off are torch's defaults. Weight decay applies to every trainable tensor.
    """
    return torch.optim.SGD(
        model.parameters(), lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay
    )


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x, y) -> torch.Tensor:
    """Forward in train mode (running stats updated once), backward, one SGD update."""
    check_batch(model, x, y, training=True)  # named errors before any state changes
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def eval_step(model: nn.Module, x) -> torch.Tensor:
    """Logits in eval mode (running statistics normalise)."""
    model.eval()
    with torch.no_grad():
        return model(x)


def gradients(model: nn.Module, x, y, training: bool):
    """(loss, d loss / d x, {canonical name: d loss / d param}).

    torch's parameter names are the canonical names (weights.py walks the same table); the dict
    follows the spec's order. A train-mode call, like any train-mode forward, updates the
    running statistics.
    """
    check_batch(model, x, y, training)
    model.train(training)
    x = x.detach().clone().requires_grad_(True)
    named = dict(model.named_parameters())
    params = {name: named[name] for name in trainable_names(model.config)}
    loss = loss_fn(model(x), y)
    grad_input, *grads = torch.autograd.grad(loss, [x, *params.values()])
    return loss.detach(), grad_input, dict(zip(params, grads))
