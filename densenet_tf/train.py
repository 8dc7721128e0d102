"""Loss, the spec's SGD, one compiled train step, an eval step, gradients for the parity checks.

Steps are compiled with tf.function; XLA (jit_compile) where the model's own Keras setting
model.jit_compile says so (variants.make_model sets it), or where the caller asks. Inputs are NHWC.
Each step checks its batch first (inputs.py): named errors before any state changes, and before
tf.function, which would report them as an autograph StagingError.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
import tensorflow as tf

from densenet_spec.case import SGDConfig
from densenet_tf.canonical import named_variables, to_canonical_array
from densenet_tf.inputs import check_batch, check_input
from densenet_tf.sgd import SpecSGD


def loss_fn(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Mean cross-entropy over the batch; integer labels."""
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(losses)


def make_optimizer(model: keras.Model, sgd: SGDConfig) -> keras.optimizers.Optimizer:
    """keras.optimizers.SGD set to the spec's rule, built for the model's trainable variables:
    buf = momentum * buf + (g + wd * p); p -= lr * buf.

    Keras keeps lr inside the velocity (v = m * v - lr * g; p += v), which is the spec's rule
    only at a constant lr; sgd.SpecSGD keeps the spec's buffer (and the rate in float64), so a
    schedule (optimizer.learning_rate = lr before a step) follows the spec too.
    """
    # parity: the spec's buffer and a float64 rate (sgd.py)
    optimizer = SpecSGD(learning_rate=sgd.lr, momentum=sgd.momentum)
    optimizer.build(model.trainable_variables)
    # parity: Keras's weight_decay is decoupled (p -= lr * wd * p, outside the momentum);
    # the spec's is coupled L2, added to the gradient in train_step. Left unset above.
    optimizer.coupled_weight_decay = sgd.weight_decay
    return optimizer


def train_step(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    x: tf.Tensor,
    y: tf.Tensor,
    *,
    jit_compile: bool | None = None,
) -> tf.Tensor:
    """Forward in train mode, backward, one SGD update (running stats updated once); the loss.

    jit_compile: XLA or not; None takes the model's keras setting, model.jit_compile.
    """
    check_batch(model, x, y, training=True)  # before any running statistic moves
    return _compiled(model, _train_step, jit_compile)(model, optimizer, x, y)


def eval_step(model: keras.Model, x: tf.Tensor, *, jit_compile: bool | None = None) -> tf.Tensor:
    """Logits in eval mode (running statistics); jit_compile as in train_step."""
    check_input(model, x, training=False)
    return _compiled(model, _eval_step, jit_compile)(model, x)


def gradients(
    model: keras.Model, x: tf.Tensor, y: tf.Tensor, training: bool
) -> tuple[tf.Tensor, tf.Tensor, dict[str, np.ndarray]]:
    """(loss, d loss / d x in NHWC, {canonical name: gradient in canonical layout})."""
    check_batch(model, x, y, training)
    x = tf.convert_to_tensor(x)
    named = {n: v for n, v in named_variables(model).items() if v.trainable}
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = loss_fn(model(x, training=training), y)
    grad_x, grads = tape.gradient(loss, (x, list(named.values())))
    grads = {n: to_canonical_array(g.numpy()) for n, g in zip(named, grads)}
    return loss, grad_x, grads


def _train_step(model, optimizer, x, y):
    with tf.GradientTape() as tape:
        loss = loss_fn(model(x, training=True), y)
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    # tf.function runs an op as soon as its inputs are ready: wd * param and the optimizer's
    # momentum * velocity read only variables, so they would run at the start of the step and
    # hold two copies of the weights through forward and backward. Start the update after the
    # last gradient instead.
    with tf.control_dependencies([tf.group(grads)]):
        # parity: coupled L2 as torch.optim.SGD: wd * param joins the gradient, so the momentum.
        wd = optimizer.coupled_weight_decay
        grads = [g + wd * v for g, v in zip(grads, variables)]
        optimizer.apply_gradients(zip(grads, variables))
    return loss


def _eval_step(model, x):
    return model(x, training=False)


# model -> {(step, jit_compile): tf.function}; an entry goes when its model does.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled(model, fn, jit_compile: bool | None):
    """The model's tf.function for `fn` (traced on first use, again for a new input shape)."""
    jit_compile = bool(model.jit_compile if jit_compile is None else jit_compile)
    functions = _COMPILED.setdefault(model, {})
    if (fn, jit_compile) not in functions:
        functions[(fn, jit_compile)] = tf.function(fn, jit_compile=jit_compile)
    return functions[(fn, jit_compile)]
