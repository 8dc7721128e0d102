"""Loss, the spec's SGD, one train step, an eval step, gradients; compiled with nnx.jit."""

from __future__ import annotations

import jax
import numpy as np
import optax
from flax import nnx

from densenet_jax.inputs import check_batch, check_input
from densenet_jax.weights import to_canonical
from densenet_spec.case import SGDConfig


def loss_fn(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy over the batch, integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_optimizer(model: nnx.Module, sgd: SGDConfig) -> nnx.Optimizer:
    """SGD with momentum and coupled L2 decay on every Param, as torch.optim.SGD.

    buf = momentum * buf + (grad + weight_decay * param); param -= lr * buf.
    The rate is a hyperparameter in the optimizer's state (optax.inject_hyperparams), in the
    model's dtype, so a schedule changes it without recompiling (sgd.set_lr).
    """
    tx = optax.chain(
        # parity: coupled L2 (added to the gradient before momentum), torch.optim.SGD's
        # weight_decay; optax.sgd has none and optax.adamw-style decay would be decoupled.
        optax.add_decayed_weights(sgd.weight_decay),
        optax.inject_hyperparams(optax.sgd, hyperparam_dtype=model.dtype)(
            learning_rate=sgd.lr, momentum=sgd.momentum
        ),
    )
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


# The model's and the optimizer's arrays are donated: the step writes their new values into the
# same buffers (a model that shares arrays with another, e.g. a plain nnx.clone, must not be
# stepped: nnx.clone(model, arrays=True) gives it its own).
@nnx.jit(donate_argnames=("model", "optimizer"))
def _train_step(model, optimizer, x, y):
    def loss_of(model):
        return loss_fn(model(x), y)

    loss, grads = nnx.value_and_grad(loss_of)(model)  # BN running stats updated here, once
    optimizer.update(model, grads)
    return loss


def train_step(
    model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array
) -> jax.Array:
    """Forward in train mode, backward, one SGD update in place; returns the loss."""
    check_batch(model, x, y, training=True)  # named errors before any state changes
    model.train()
    return _train_step(model, optimizer, x, y)


@nnx.jit
def _eval_step(model, x):
    return model(x)


def eval_step(model: nnx.Module, x: jax.Array) -> jax.Array:
    """Logits with BatchNorm on its running statistics."""
    check_input(model, x, training=False)
    model.eval()
    return _eval_step(model, x)


@nnx.jit
def _loss_and_gradients(model, x, y):
    def loss_of(model, x):
        return loss_fn(model(x), y)

    grad_fn = nnx.value_and_grad(loss_of, argnums=(0, 1))  # the model's Params, x
    loss, (grads, grad_input) = grad_fn(model, x)
    return loss, grad_input, grads


def gradients(
    model: nnx.Module, x: jax.Array, y: jax.Array, training: bool
) -> tuple[jax.Array, jax.Array, dict[str, np.ndarray]]:
    """(loss, d loss / d x in NHWC, {canonical name: gradient in canonical layout}).

    A train-mode call, like any train-mode forward, updates the running statistics.
    """
    check_batch(model, x, y, training)
    if training:
        model.train()
    else:
        model.eval()
    loss, grad_input, grads = _loss_and_gradients(model, x, y)
    return loss, grad_input, to_canonical(model, grads)
