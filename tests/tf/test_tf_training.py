"""Issue 18 in TensorFlow: the spec's momentum buffer (learning rate outside it) under a
learning-rate schedule, read and written in canonical names (the shared checks:
contracts.TrainingContract), and SpecSGD against Keras's own SGD."""

import dataclasses

import pytest

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from contracts import LRS, SGD, TrainingContract, schedule_case  # noqa: E402

from densenet_spec import reference  # noqa: E402
from densenet_tf.adapter import Adapter  # noqa: E402
from densenet_tf.sgd import SpecSGD  # noqa: E402
from densenet_tf.train import _COMPILED  # noqa: E402


class TestTraining(TrainingContract):
    Adapter = Adapter  # the buffers are SpecSGD's own slots: resume is bit for bit


def _run_optimizer(optimizer, w0, grads, lrs, dtype):
    """Steps of an optimizer on one variable with given gradients, in one tf.function."""
    variable = keras.Variable(w0, dtype=dtype)
    optimizer.build([variable])

    @tf.function
    def step(g):
        optimizer.apply_gradients([(g, variable)])

    for g, lr in zip(grads, lrs):
        optimizer.learning_rate = lr
        step(tf.constant(g))
    assert step.experimental_get_tracing_count() == 1  # a new rate needs no retrace
    return variable.numpy(), optimizer, variable


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_optimizer_follows_the_spec_under_a_schedule(dtype):
    """Given gradients, rates that change: SpecSGD equals reference.sgd_step with each step's
    rate (float64 to 1e-15, float32 to its rounding); Keras's own SGD does not."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(1000)
    grads = rng.standard_normal((len(LRS), 1000))
    nowd = dataclasses.replace(SGD, weight_decay=0.0)  # the coupled decay is train.py's
    want, buffers = {"w": w0}, None
    for g, lr in zip(grads, LRS):
        step = dataclasses.replace(nowd, lr=lr)
        want, buffers = reference.sgd_step(want, {"w": g}, buffers, step)
    w0, grads = w0.astype(dtype), grads.astype(dtype)
    ours, optimizer, variable = _run_optimizer(SpecSGD(SGD.lr, SGD.momentum), w0, grads, LRS, dtype)
    theirs, _, _ = _run_optimizer(
        keras.optimizers.SGD(SGD.lr, momentum=SGD.momentum), w0, grads, LRS, dtype
    )
    scale = np.abs(want["w"]).max()
    tol = 1e-6 if dtype == "float32" else 1e-15
    assert np.abs(ours - want["w"]).max() / scale < tol
    assert np.abs(theirs - want["w"]).max() / scale > 1e-3  # rate inside the momentum
    got = optimizer.buffer(variable).numpy()
    assert np.abs(got - buffers["w"]).max() / np.abs(buffers["w"]).max() < tol


def test_a_new_rate_reaches_the_compiled_train_step_without_a_retrace():
    case = schedule_case("float64", steps=3)
    adapter = Adapter(case)
    model = adapter.build()
    optimizer = adapter.make_optimizer(model)
    for k, lr in enumerate([0.05, 0.5, 0.0]):
        adapter.set_lr(optimizer, lr)
        before = adapter.to_canonical(model)
        adapter.train_step(
            model, optimizer, adapter.images(case.step_x[k]), adapter.labels(case.step_y[k])
        )
        moved = not np.array_equal(
            adapter.to_canonical(model)["head.fc.weight"], before["head.fc.weight"]
        )
        assert moved == (lr != 0.0)
    assert optimizer.learning_rate.dtype == tf.float64
    (step,) = _COMPILED[model].values()
    assert step.experimental_get_tracing_count() == 1
