"""Issue 18 in MXNet: the spec's momentum buffer (learning rate outside it) under a learning-rate
schedule, read and written in canonical names, against densenet_spec.reference.sgd_steps."""

import dataclasses

import pytest

mx = pytest.importorskip("mxnet")

import numpy as np  # noqa: E402
from mxnet import autograd, gluon, nd  # noqa: E402

from densenet_mx.adapter import Adapter  # noqa: E402
from densenet_mx.sgd import SpecSGD  # noqa: E402
from densenet_spec import reference  # noqa: E402
from densenet_spec.case import SGDConfig, make_case  # noqa: E402
from densenet_spec.compare import rel_errors  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.params import trainable_names  # noqa: E402

SGD = SGDConfig(lr=0.05, momentum=0.9, weight_decay=1e-4)
LRS = [0.05, 0.05, 0.02, 0.002, 0.03]  # constant, then changes (a step and a cosine-like tail)


def _case(dtype, steps=5, variant="plain"):  # steps: len(LRS)
    return make_case(
        get_preset("tiny"),
        image_size=32,
        dtype=dtype,
        steps=steps,
        quantities=("step",),
        sgd=SGD,
        variant=variant,
    )


def _train(adapter, case, lrs, *, start=0, state=None, buffers=None):
    """Steps start.. of `case` with rates lrs (set_lr before each, as densenet_spec.training
    does for a schedule); from `state`/`buffers` when given. Returns (weights, buffers, losses)."""
    if state is not None:
        adapter.case = dataclasses.replace(case, params=state)
    model = adapter.build()
    trainer = adapter.make_optimizer(model)
    if buffers is not None:
        adapter.load_optimizer_state(model, trainer, buffers)
    losses = []
    for k in range(start, len(lrs)):
        if lrs is not None:
            adapter.set_lr(trainer, lrs[k])
        x, y = adapter.images(case.step_x[k]), adapter.labels(case.step_y[k])
        losses.append(float(adapter.train_step(model, trainer, x, y).asscalar()))
    return adapter.to_canonical(model), adapter.optimizer_state(model, trainer), losses


def _max_error(got: dict, want: dict, *, float32: bool = False) -> float:
    """Largest relative error. float32: without the convolution biases, whose train-mode
    gradient is float32 rounding noise (every conv feeds a BatchNorm, which removes a
    per-channel constant), so their buffers agree only to that noise (~1e-3 relative)."""
    keys = [k for k in want if not (float32 and ".conv" in k and k.endswith(".bias"))]
    return max(rel_errors({k: got[k] for k in keys}, {k: want[k] for k in keys}).values())


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


@pytest.mark.parametrize("variant", ["plain", "fast"])
def test_float64_schedule_follows_the_oracle(variant):
    case = _case("float64", variant=variant)
    state, buffers, losses = _train(Adapter(case), case, LRS)
    want_state, want_buffers, want_losses = reference.sgd_steps(
        case.params, case.config, case.step_x, case.step_y, SGD, lrs=LRS
    )
    assert list(buffers) == trainable_names(case.config)
    assert _max_error(state, want_state) < 1e-10  # float64 rounding
    assert _max_error(buffers, want_buffers) < 1e-10  # float64 rounding
    np.testing.assert_allclose(losses, want_losses, rtol=1e-13)


def test_float32_schedule_follows_the_oracle_to_float32_rounding():
    """float32 starts on MXNet's fused kernel (rate inside the slot) and moves to the spec's
    form at the first new rate; the result follows the float64 oracle to float32 rounding."""
    case = _case("float32")
    state, buffers, _ = _train(Adapter(case), case, LRS)
    case64 = _case("float64")
    want_state, want_buffers, _ = reference.sgd_steps(
        {k: v.astype(np.float64) for k, v in case.params.items()},
        case.config,
        case.step_x.astype(np.float64),
        case.step_y,
        SGD,
        lrs=LRS,
    )
    assert case64.step_y.tolist() == case.step_y.tolist()
    assert _max_error(state, want_state) < 1e-5
    # stem.norm's float32 gradient is the sensitive one (5e-4 here: ReLU kinks and max-pool
    # ties, issue 24); the optimizer alone is exact to rounding (the test above)
    assert _max_error(buffers, want_buffers, float32=True) < 2e-3
    assert all(b.dtype == np.float32 for b in buffers.values())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_buffers_are_zero_before_the_first_step_and_resume_continues(dtype):
    """optimizer_state after k steps, loaded into a fresh model and Trainer, continues the run:
    the same weights and buffers as the straight run (float64 to rounding, float32 within the
    float32 rounding of the slot's conversion)."""
    case = _case(dtype, steps=4)
    adapter = Adapter(case)
    model = adapter.build()
    trainer = adapter.make_optimizer(model)
    zeros = adapter.optimizer_state(model, trainer)
    assert all(not b.any() and b.dtype == dtype for b in zeros.values())
    constant = [SGD.lr] * 4
    straight_state, straight_buffers, _ = _train(Adapter(case), case, constant)
    half_state, half_buffers, _ = _train(Adapter(case), case, constant[:2])
    state, buffers, _ = _train(
        Adapter(case), case, constant, start=2, state=half_state, buffers=half_buffers
    )
    float32 = dtype == "float32"
    assert _max_error(state, straight_state) < (1e-5 if float32 else 1e-12)
    # float32: the slot's conversion (buf = -mom / lr and back) rounds once, and stem.norm's
    # sensitive gradient carries that into its buffer (7.6e-5 measured)
    assert _max_error(buffers, straight_buffers, float32=float32) < (1e-3 if float32 else 1e-12)


def test_buffers_loaded_before_the_first_step_are_used():
    """A checkpoint's buffers (from any framework) are the spec's: loading them and stepping
    equals the oracle continuing from them."""
    case = _case("float64", steps=2)
    rng = np.random.default_rng(5)
    start = {n: rng.standard_normal(case.params[n].shape) for n in trainable_names(case.config)}
    state, buffers, _ = _train(Adapter(case), case, [SGD.lr] * 2, buffers=start)
    want_state, want_buffers, _ = reference.sgd_steps(
        case.params, case.config, case.step_x, case.step_y, SGD, buffers=start
    )
    assert _max_error(state, want_state) < 1e-10  # float64 rounding
    assert _max_error(buffers, want_buffers) < 1e-10  # float64 rounding


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
