"""Loss, the spec's SGD, one train step, an eval step, gradients for the parity check.

Gluon compiles by `model.hybridize()` (done once by the caller); these functions run the same
code hybridized or not. autograd.record() is train mode; outside it the model is in eval mode.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import numpy as np
from mxnet import autograd, gluon, nd

from densenet_mx.canonical import parameters
from densenet_mx.inputs import check_batch
from densenet_mx.sgd import SpecSGD
from densenet_spec.case import SGDConfig
from densenet_spec.params import trainable_names

_cross_entropy = gluon.loss.SoftmaxCrossEntropyLoss()  # per-example loss, integer labels


def loss_fn(logits: nd.NDArray, labels: nd.NDArray) -> nd.NDArray:
    """Mean cross-entropy over the batch."""
    return _cross_entropy(logits, labels).mean()


def make_optimizer(model: gluon.Block, sgd: SGDConfig) -> gluon.Trainer:
    """A Trainer with the spec's SGD: buf = momentum * buf + (g + wd * w); w -= lr * buf.

    At a constant lr that is MXNet's own rule, mom = momentum * mom - lr * (g + wd * w);
    w += mom, with mom = -lr * buf; sgd.SpecSGD keeps MXNet's fused kernel there and switches
    to the spec's form for float64 weights and once trainer.set_learning_rate changes the rate.
    Every Gluon Parameter has wd_mult 1, BN gamma and beta included (the Trainer hands the
    optimizer its Parameters, so the optimizer's name-based default of no decay for names not
    ending in "_weight"/"_gamma" does not apply): weight decay reaches every trainable tensor.
    """
    optimizer = SpecSGD(momentum=sgd.momentum, learning_rate=sgd.lr, wd=sgd.weight_decay)
    # Sorted by size: a fused float32 update loops over its largest tensor's length for each of
    # its tensors, so groups of like sizes update faster than model order.
    params = sorted(model.collect_params().values(), key=lambda p: int(np.prod(p.shape)))
    return gluon.Trainer(params, optimizer, kvstore=None)  # one device: no kvstore


def train_step(model: gluon.Block, trainer: gluon.Trainer, x, y) -> nd.NDArray:
    """Forward in train mode, backward, one SGD update; running stats updated once."""
    check_batch(model, x, y, training=True)  # named errors before any state changes
    with _running_stats_update(model, x.shape):
        with autograd.record():
            loss = loss_fn(model(x), y)
        loss.backward()  # MXNet's CPU BatchNorm updates its running statistics here
    trainer.step(1)  # parity: step(batch_size) divides gradients by batch_size; the loss is a mean
    return loss


def eval_step(model: gluon.Block, x) -> nd.NDArray:
    """Logits in eval mode (running statistics normalise)."""
    return model(x)


def gradients(model: gluon.Block, x, y, training: bool):
    """(loss, d loss / d x, {canonical name: d loss / d param}).

    A train-mode call, like a train step, updates the running statistics (once, to the spec).
    backward() must be told the mode too: by default it runs train-mode backward kernels, and
    BatchNorm then differentiates through batch statistics that the eval-mode forward never
    used (MXNet's documented rule: record(train_mode=False) with backward(train_mode=False)).
    MXNet 1.9 on CPU with oneDNN (MKLDNN) computes the max-pool gradient wrongly when the forward
    ran in eval mode (autograd.record(train_mode=False)); the eval-mode input gradient of an
    "imagenet" stem in float32 is then wrong. Run with MXNET_MKLDNN_ENABLED=0 in the environment
    before the first MXNet operator runs (adapter.environment does).
    """
    check_batch(model, x, y, training)
    x = x.copy()
    x.attach_grad()
    with _running_stats_update(model, x.shape) if training else nullcontext():
        with autograd.record(train_mode=training):
            loss = loss_fn(model(x), y)
        loss.backward(train_mode=training)  # parity: backward defaults to train mode (BN's formula)
    params = parameters(model)
    grads = {name: params[name].grad() for name in trainable_names(model.config)}
    return loss, x.grad, grads


def _running_stats_update(model: gluon.Block, input_shape) -> AbstractContextManager:
    """parity: the spec's running-statistic update around forward and backward
    (running_stats.py), or MXNet's own rule for a model built with running_stats=None."""
    return model.running_stats(input_shape) if model.running_stats else nullcontext()
