"""Issue 18 in torch: the spec's momentum buffer (learning rate outside it) under a learning-rate
schedule, read and written in canonical names (the shared checks: contracts.TrainingContract)."""

import pytest

pytest.importorskip("torch")

from contracts import TrainingContract, schedule_case  # noqa: E402

from densenet_torch.adapter import Adapter  # noqa: E402


class TestTraining(TrainingContract):
    Adapter = Adapter  # torch's momentum buffer is the spec's: resume is bit for bit


def test_nothing_reaches_the_optimizer_state_from_a_failed_load():
    import numpy as np

    from densenet_spec.errors import OptimizerStateError

    case = schedule_case("float64", steps=1)
    adapter = Adapter(case)
    model = adapter.build()
    optimizer = adapter.make_optimizer(model)
    with pytest.raises(OptimizerStateError):
        adapter.load_optimizer_state(model, optimizer, {"stem.conv.weight": np.zeros(3)})
    assert not optimizer.state  # torch's state stays empty: no buffer was even created
