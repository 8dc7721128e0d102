"""Issue 18 in JAX: the spec's momentum buffer (learning rate outside it) under a learning-rate
schedule, read and written in canonical names (the shared checks: contracts.TrainingContract)."""

import pytest

pytest.importorskip("jax")

import numpy as np  # noqa: E402
from contracts import TrainingContract, schedule_case  # noqa: E402

from densenet_jax.adapter import Adapter  # noqa: E402


class TestTraining(TrainingContract):
    Adapter = Adapter  # optax's trace is the spec's buffer: resume is bit for bit


def test_the_rate_is_an_array_in_the_models_dtype():
    """The rate is an array in the optimizer's state (optax.inject_hyperparams), in the model's
    dtype: a schedule changes a value the compiled step reads, and a float32 run stays float32."""
    case = schedule_case("float32", steps=1)
    adapter = Adapter(case)
    model = adapter.build()
    optimizer = adapter.make_optimizer(model)
    adapter.set_lr(optimizer, 0.002)
    rate = optimizer.opt_state[1].hyperparams["learning_rate"]
    assert rate.dtype == np.float32 and float(rate[...]) == np.float32(0.002)
    adapter.train_step(model, optimizer, adapter.images(case.step_x[0]), case.step_y[0])
    assert all(b.dtype == np.float32 for b in adapter.optimizer_state(model, optimizer).values())
