"""Issue 18 in TensorFlow: the spec's momentum buffer (learning rate outside it) under a
learning-rate schedule, read and written in canonical names, against
densenet_spec.reference.sgd_steps."""

import dataclasses

import pytest

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from densenet_spec import reference  # noqa: E402
from densenet_spec.case import SGDConfig, make_case  # noqa: E402
from densenet_spec.compare import rel_errors  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.params import trainable_names  # noqa: E402
from densenet_tf.adapter import Adapter  # noqa: E402
from densenet_tf.sgd import SpecSGD  # noqa: E402
from densenet_tf.train import _COMPILED  # noqa: E402

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
    optimizer = adapter.make_optimizer(model)
    if buffers is not None:
        adapter.load_optimizer_state(model, optimizer, buffers)
    losses = []
    for k in range(start, len(lrs)):
        adapter.set_lr(optimizer, lrs[k])
        x, y = adapter.images(case.step_x[k]), adapter.labels(case.step_y[k])
        losses.append(float(adapter.train_step(model, optimizer, x, y).numpy()))
    return adapter.to_canonical(model), adapter.optimizer_state(model, optimizer), losses


def _max_error(got: dict, want: dict, *, float32: bool = False) -> float:
    """Largest relative error. float32: without the convolution biases, whose train-mode
    gradient is float32 rounding noise (every conv feeds a BatchNorm, which removes a
    per-channel constant), so their buffers agree only to that noise."""
    keys = [k for k in want if not (float32 and ".conv" in k and k.endswith(".bias"))]
    return max(rel_errors({k: got[k] for k in keys}, {k: want[k] for k in keys}).values())


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
    case = _case("float32")
    state, buffers, _ = _train(Adapter(case), case, LRS)
    want_state, want_buffers, _ = reference.sgd_steps(
        {k: v.astype(np.float64) for k, v in case.params.items()},
        case.config,
        case.step_x.astype(np.float64),
        case.step_y,
        SGD,
        lrs=LRS,
    )
    assert _max_error(state, want_state) < 1e-5
    # stem.norm's float32 gradient is the sensitive one (ReLU kinks and max-pool ties, issue
    # 24); the optimizer alone is exact to rounding (the test above)
    assert _max_error(buffers, want_buffers, float32=True) < 2e-3
    assert all(b.dtype == np.float32 for b in buffers.values())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_buffers_are_zero_before_the_first_step_and_resume_continues(dtype):
    """optimizer_state after k steps, loaded into a fresh model and optimizer, continues the
    run: the same weights and buffers as the straight run. The buffers are the optimizer's own
    slots (no conversion), so float32 resumes bit for bit too."""
    case = _case(dtype, steps=4)
    adapter = Adapter(case)
    model = adapter.build()
    optimizer = adapter.make_optimizer(model)
    zeros = adapter.optimizer_state(model, optimizer)
    assert list(zeros) == trainable_names(case.config)
    assert all(not b.any() and b.dtype == dtype for b in zeros.values())
    constant = [SGD.lr] * 4
    straight_state, straight_buffers, _ = _train(Adapter(case), case, constant)
    half_state, half_buffers, _ = _train(Adapter(case), case, constant[:2])
    state, buffers, _ = _train(
        Adapter(case), case, constant, start=2, state=half_state, buffers=half_buffers
    )
    for name in straight_state:
        np.testing.assert_array_equal(state[name], straight_state[name], err_msg=name)
    for name in straight_buffers:
        np.testing.assert_array_equal(buffers[name], straight_buffers[name], err_msg=name)


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
    with pytest.raises(KeyError, match="no trainable parameter named stem.norm.running_mean"):
        adapter = Adapter(case)
        model = adapter.build()
        adapter.load_optimizer_state(
            model, adapter.make_optimizer(model), {"stem.norm.running_mean": np.zeros(8)}
        )


def test_a_new_rate_reaches_the_compiled_train_step_without_a_retrace():
    case = _case("float64", steps=3)
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
