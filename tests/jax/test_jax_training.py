"""Issue 18 in JAX: the spec's momentum buffer (learning rate outside it) under a learning-rate
schedule, read and written in canonical names, against densenet_spec.reference.sgd_steps."""

import dataclasses

import pytest

jax = pytest.importorskip("jax")

import numpy as np  # noqa: E402

from densenet_jax.adapter import Adapter  # noqa: E402
from densenet_spec import reference  # noqa: E402
from densenet_spec.case import SGDConfig, make_case  # noqa: E402
from densenet_spec.compare import rel_errors  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.errors import OptimizerStateError  # noqa: E402
from densenet_spec.params import trainable_names  # noqa: E402

SGD = SGDConfig(lr=0.05, momentum=0.9, weight_decay=1e-4)
LRS = [0.05, 0.05, 0.02, 0.002, 0.03]  # constant, then changes (a step and a cosine-like tail)


def _case(dtype, steps=5, variant="plain", memory_efficient=False):  # steps: len(LRS)
    return make_case(
        get_preset("tiny"),
        image_size=32,
        dtype=dtype,
        steps=steps,
        quantities=("step",),
        sgd=SGD,
        variant=variant,
        memory_efficient=memory_efficient,
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
        losses.append(float(adapter.train_step(model, optimizer, x, y)))
    return adapter.to_canonical(model), adapter.optimizer_state(model, optimizer), losses


def _max_error(got: dict, want: dict) -> float:
    return max(rel_errors({k: got[k] for k in want}, want).values())


@pytest.mark.parametrize(
    "variant, memory_efficient", [("plain", False), ("fast", False), ("plain", True)]
)
def test_float64_schedule_follows_the_oracle(variant, memory_efficient):
    case = _case("float64", variant=variant, memory_efficient=memory_efficient)
    state, buffers, losses = _train(Adapter(case), case, LRS)
    want_state, want_buffers, want_losses = reference.sgd_steps(
        case.params, case.config, case.step_x, case.step_y, SGD, lrs=LRS
    )
    assert list(buffers) == trainable_names(case.config)
    assert all(b.dtype == np.float64 and b.flags.c_contiguous for b in buffers.values())
    assert _max_error(state, want_state) < 1e-10  # float64 rounding
    assert _max_error(buffers, want_buffers) < 1e-10  # float64 rounding
    np.testing.assert_allclose(losses, want_losses, rtol=1e-13)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("variant", ["plain", "fast"])
def test_buffers_are_zero_before_the_first_step_and_resume_continues(dtype, variant):
    """optimizer_state after k steps, loaded into a fresh model and optimizer, continues the run:
    optax's trace is the spec's buffer, so the resumed run is the straight run bit for bit."""
    case = _case(dtype, steps=4, variant=variant)
    adapter = Adapter(case)
    model = adapter.build()
    optimizer = adapter.make_optimizer(model)
    zeros = adapter.optimizer_state(model, optimizer)
    assert all(not b.any() and b.dtype == dtype for b in zeros.values())
    straight_state, straight_buffers, _ = _train(Adapter(case), case, LRS[:4])
    half_state, half_buffers, _ = _train(Adapter(case), case, LRS[:2])
    state, buffers, _ = _train(
        Adapter(case), case, LRS[:4], start=2, state=half_state, buffers=half_buffers
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


def test_mismatched_buffers_are_a_named_error():
    case = _case("float64", steps=1)
    adapter = Adapter(case)
    model = adapter.build()
    optimizer = adapter.make_optimizer(model)
    good = adapter.optimizer_state(model, optimizer)
    missing = dict(list(good.items())[1:])
    with pytest.raises(OptimizerStateError, match="missing"):
        adapter.load_optimizer_state(model, optimizer, missing)
    with pytest.raises(OptimizerStateError, match="unexpected"):
        adapter.load_optimizer_state(model, optimizer, good | {"stem.nonsense": np.zeros(1)})
    wrong = good | {"stem.conv.weight": np.zeros(3)}
    with pytest.raises(OptimizerStateError, match=r"mis-shaped \['stem\.conv\.weight'\]"):
        adapter.load_optimizer_state(model, optimizer, wrong)
    assert all(not b.any() for b in adapter.optimizer_state(model, optimizer).values())


def test_the_rate_is_an_array_in_the_models_dtype():
    """The rate is an array in the optimizer's state (optax.inject_hyperparams), in the model's
    dtype: a schedule changes a value the compiled step reads, and a float32 run stays float32."""
    case = _case("float32", steps=1)
    adapter = Adapter(case)
    model = adapter.build()
    optimizer = adapter.make_optimizer(model)
    adapter.set_lr(optimizer, 0.002)
    rate = optimizer.opt_state[1].hyperparams["learning_rate"]
    assert rate.dtype == np.float32 and float(rate[...]) == np.float32(0.002)
    adapter.train_step(model, optimizer, adapter.images(case.step_x[0]), case.step_y[0])
    assert all(b.dtype == np.float32 for b in adapter.optimizer_state(model, optimizer).values())


def test_predict_is_eval_mode_logits():
    case = _case("float64", steps=1)
    adapter = Adapter(case)
    model = adapter.build()
    x = adapter.images(case.x)
    got = adapter.to_numpy(adapter.predict(model, x))
    want = reference.forward_features(case.params, case.config, case.x, False)[0]["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-10)
