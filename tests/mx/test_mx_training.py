"""Issue 18 in MXNet: the spec's momentum buffer (learning rate outside it) under a learning-rate
schedule, read and written in canonical names (the shared checks: contracts.TrainingContract), and
SpecSGD against Gluon's own "sgd"."""

import dataclasses

import pytest

mx = pytest.importorskip("mxnet")

import numpy as np  # noqa: E402
from contracts import LRS, SGD, TrainingContract  # noqa: E402
from mxnet import autograd, gluon, nd  # noqa: E402

from densenet_mx.adapter import Adapter  # noqa: E402
from densenet_mx.sgd import SpecSGD  # noqa: E402
from densenet_spec import reference  # noqa: E402


class TestTraining(TrainingContract):
    Adapter = Adapter
    memory_efficient_unavailable = "MXNet 1.9 Gluon has none"  # memory_efficient.py says why
    # float32: MXNet's slot holds the fused kernel's form (buf = -mom / lr), converted to and
    # from the spec's buffer once, one rounding that stem.norm's sensitive gradient carries on
    float32_resume_bounds = (1e-5, 1e-3)


def _run_optimizer(optimizer, w0, grads, lrs, dtype):
    """Steps of a Trainer on one Parameter with given gradients (loss = sum(w * g))."""
    param = gluon.Parameter("w", shape=w0.shape, dtype=dtype)
    param.initialize()
    param.set_data(nd.array(w0, dtype=dtype))
    trainer = gluon.Trainer([param], optimizer, kvstore=None)
    for g, lr in zip(grads, lrs):
        trainer.set_learning_rate(lr)
        with autograd.record():
            loss = (param.data() * nd.array(g, dtype=dtype)).sum()
        loss.backward()
        trainer.step(1)
    return param.data().asnumpy(), trainer


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_optimizer_follows_the_spec_under_a_schedule(dtype):
    """Given gradients, rates that change: SpecSGD equals reference.sgd_step with each step's
    rate (float64 to 1e-15, float32 to its rounding); Gluon's own "sgd" does not."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(1000)
    grads = rng.standard_normal((len(LRS), 1000))
    want, buffers = {"w": w0}, None
    for g, lr in zip(grads, LRS):
        step = dataclasses.replace(SGD, lr=lr)
        want, buffers = reference.sgd_step(want, {"w": g}, buffers, step)
    kw = {"learning_rate": SGD.lr, "momentum": SGD.momentum, "wd": SGD.weight_decay}
    w0, grads = w0.astype(dtype), grads.astype(dtype)
    ours, trainer = _run_optimizer(SpecSGD(**kw), w0, grads, LRS, dtype)
    theirs, _ = _run_optimizer(mx.optimizer.SGD(**kw), w0, grads, LRS, dtype)
    scale = np.abs(want["w"]).max()
    tol = 1e-6 if dtype == "float32" else 1e-15
    assert np.abs(ours - want["w"]).max() / scale < tol
    assert np.abs(theirs - want["w"]).max() / scale > 1e-3  # rate inside the momentum
    got = trainer.optimizer.buffers([0])[0]
    assert np.abs(got - buffers["w"]).max() / np.abs(buffers["w"]).max() < tol


def test_the_fused_kernel_stays_at_a_constant_rate_and_the_spec_form_takes_over():
    """set_learning_rate with the same rate keeps MXNet's fused float32 path (bit for bit
    Gluon's "sgd"); a new rate moves the slots to the spec's buffer, once."""
    rng = np.random.default_rng(0)
    w0, grads = rng.standard_normal(50).astype("float32"), rng.standard_normal((3, 50))
    grads = grads.astype("float32")
    kw = {"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-4}
    ours, trainer = _run_optimizer(SpecSGD(**kw), w0, grads, [0.1] * 3, "float32")
    fused, _ = _run_optimizer(mx.optimizer.SGD(**kw), w0, grads, [0.1] * 3, "float32")
    np.testing.assert_array_equal(ours, fused)
    assert trainer.optimizer.spec_form is False
    _, trainer = _run_optimizer(SpecSGD(**kw), w0, grads, [0.1, 0.1, 0.01], "float32")
    assert trainer.optimizer.spec_form is True
