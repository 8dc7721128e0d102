"""Loss, the spec's SGD, one train step, an eval step, gradients for the parity check.

Gluon compiles by `model.hybridize()` (done once by the caller); these functions run the same
code hybridized or not. autograd.record() is train mode; outside it the model is in eval mode.
"""

from __future__ import annotations

import mxnet as mx
from mxnet import autograd, gluon, nd

from densenet_spec.case import SGDConfig
from densenet_spec.params import trainable_names
from densenet_mx.weights import _parameters

_cross_entropy = gluon.loss.SoftmaxCrossEntropyLoss()  # per-example loss, integer labels


def loss_fn(logits: nd.NDArray, labels: nd.NDArray) -> nd.NDArray:
    """Mean cross-entropy over the batch."""
    return _cross_entropy(logits, labels).mean()


class _SGD(mx.optimizer.Optimizer):
    """MXNet's SGD with momentum, in NDArray arithmetic: mom = momentum * mom - lr * (g + wd * w);
    w += mom.

    parity: the fused kernel behind optimizer "sgd" (sgd_mom_update) takes lr, momentum and wd as
    C floats, so 0.05 becomes 0.050000001: every float64 update is off by 1e-8 relative, which
    the float64 step tolerance (1e-9) sees after two steps. NDArray arithmetic with Python
    scalars computes in double, so the same update here is exact to the weights' dtype.
    """

    def __init__(self, momentum: float, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum

    def create_state(self, index, weight):
        return nd.zeros(weight.shape, weight.context, dtype=weight.dtype)

    def update(self, index, weight, grad, state):
        self._update_count(index)
        lr, wd = self._get_lr(index), self._get_wd(index)
        state[:] = self.momentum * state - lr * (self.rescale_grad * grad + wd * weight)
        weight[:] += state


def make_optimizer(model: gluon.Block, sgd: SGDConfig) -> gluon.Trainer:
    """A Trainer with MXNet's SGD rule: mom = momentum * mom - lr * (g + wd * w); w += mom.

    At a constant lr that is the spec's update (buf = momentum * buf + (g + wd * w);
    w -= lr * buf) with mom = -lr * buf. Every Gluon Parameter has wd_mult 1, BN gamma and beta
    included (the Trainer hands the optimizer its Parameters, so the optimizer's name-based
    default of no decay for names not ending in "_weight"/"_gamma" does not apply): weight decay
    reaches every trainable tensor.
    """
    optimizer = _SGD(momentum=sgd.momentum, learning_rate=sgd.lr, wd=sgd.weight_decay)
    return gluon.Trainer(model.collect_params(), optimizer, kvstore=None)  # one device: no kvstore


def train_step(model: gluon.Block, trainer: gluon.Trainer, x, y) -> nd.NDArray:
    """Forward in train mode, backward, one SGD update; running stats updated once."""
    correction = model.running_stats_correction(x.shape)  # parity: the spec's update
    with autograd.record():
        loss = loss_fn(model(x), y)
    loss.backward()  # MXNet's CPU BatchNorm updates its running statistics here
    correction.apply()
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
    before the first MXNet operator runs (worker.environment does).
    """
    x = x.copy()
    x.attach_grad()
    correction = model.running_stats_correction(x.shape) if training else None
    with autograd.record(train_mode=training):
        loss = loss_fn(model(x), y)
    loss.backward(train_mode=training)  # parity: backward defaults to train mode (BN's formula)
    if correction is not None:
        correction.apply()
    params = _parameters(model)
    grads = {name: params[name].grad() for name in trainable_names(model.config)}
    return loss, x.grad, grads
