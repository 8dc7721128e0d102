"""The oracle's data-parallel semantics (reference.replica_*, replicas.py): issue 20."""

import re

import numpy as np
import pytest

from densenet_spec import reference, replicas
from densenet_spec.case import make_case
from densenet_spec.config import get_preset
from densenet_spec.errors import UsageError
from densenet_spec.harness import expected_parts


@pytest.fixture(scope="module")
def case():
    return make_case(get_preset("tiny"), batch=4, image_size=32, steps=2)


@pytest.fixture(scope="module")
def one_device(case):
    return reference.run_case(case)[0]


def test_synchronised_equal_shards_is_the_one_device_step(case, one_device):
    """Mean of per-shard mean losses = the whole batch's mean loss, bit for bit here."""
    for r in (1, 2, 4):
        got = replicas.oracle(replicas.replica_case(case, r, "synchronised"))
        for k, v in one_device.items():
            if k in got:
                np.testing.assert_array_equal(got[k], v, err_msg=f"{r} replicas: {k}")
        for k in got:
            if "/replica" in k:  # every replica's running statistics are replica 0's
                np.testing.assert_array_equal(got[k], got[re.sub(r"/replica\d+", "", k)])


def test_one_replica_per_replica_is_the_one_device_step(case, one_device):
    got = replicas.oracle(replicas.replica_case(case, 1, "per-replica"))
    for k in got:
        np.testing.assert_array_equal(got[k], one_device[k], err_msg=k)


def test_per_replica_is_the_mean_of_shard_gradients(case):
    x, y = case.x, case.y
    _, _, value, grad_x, grads = reference.replica_forward_backward(
        case.params, case.config, x, y, 2, "per-replica"
    )
    parts = [
        reference.gradients(case.params, case.config, x[s], y[s], True)
        for s in (slice(0, 2), slice(2, 4))
    ]
    assert value == pytest.approx((parts[0][0] + parts[1][0]) / 2, rel=1e-15)
    np.testing.assert_allclose(grad_x, np.concatenate([p[1] for p in parts]) / 2, rtol=1e-14)
    for n, g in grads.items():
        np.testing.assert_allclose(g, (parts[0][2][n] + parts[1][2][n]) / 2, rtol=1e-13, atol=1e-15)


def test_per_replica_differs_from_synchronised(case):
    """The two BN semantics differ by far more than any float64 bound (docs/data_parallel.md)."""
    s = replicas.oracle(replicas.replica_case(case, 2, "synchronised"))
    p = replicas.oracle(replicas.replica_case(case, 2, "per-replica"))
    assert np.array_equal(s["eval/logits"], p["eval/logits"])  # eval: running statistics
    assert np.max(np.abs(s["train/logits"] - p["train/logits"])) > 1e-3
    assert abs(s["loss/train"][0] - p["loss/train"][0]) > 1e-5
    assert np.max(np.abs(s["step/head.fc.weight"] - p["step/head.fc.weight"])) > 1e-4


def test_buffer_policy_changes_only_the_other_replicas_buffers(case):
    """DDP's broadcast_buffers: replica 0's state and every parameter are the same either way."""
    b = replicas.oracle(replicas.replica_case(case, 2, "per-replica", "broadcast"))
    loc = replicas.oracle(replicas.replica_case(case, 2, "per-replica", "local"))
    same = [k for k in b if "/replica" not in k]
    for k in same:
        np.testing.assert_array_equal(b[k], loc[k], err_msg=k)
    other = [k for k in b if "/replica" in k]
    assert max(np.max(np.abs(b[k] - loc[k])) for k in other) > 1e-4


def test_keys_options_and_mutation(case):
    rc = replicas.replica_case(case, 2, "synchronised")
    keys = replicas.result_keys(rc)
    bn = len(replicas.running_names(case.config))
    assert sum("/replica1/" in k for k in keys) == bn
    assert replicas.mutation_case(rc).options["bn_sync"] == "per-replica"
    assert expected_parts(case.config, "bn_sync", rc.quantities) == {"train": "stem"}
    with pytest.raises(UsageError, match="equal shards"):
        replicas.replica_case(case, 3, "synchronised")
    with pytest.raises(UsageError, match="bn-sync"):
        replicas.replica_case(case, 2, "global")
    with pytest.raises(ValueError, match="equal shards"):
        reference.shards(case.x, 3)


def test_a_failing_process_ends_every_process_and_a_timeout_kills_them():
    """densenet_spec.distributed.run_processes, what every engine's launch uses: one process
    exits with an error while another waits: it raises at once (the exit code kept) and leaves
    no process behind; a timeout does the same."""
    import os
    import sys
    import time

    from densenet_spec.distributed import ProcessFailed, run_processes

    env = dict(os.environ)
    sleeper = ([sys.executable, "-c", "import time; time.sleep(60)"], env)
    failing = ([sys.executable, "-c", "raise SystemExit(3)"], env)
    start = time.monotonic()
    with pytest.raises(ProcessFailed, match="test: process 1 exited 3") as failed:
        run_processes([sleeper, failing], timeout=30, what="test")
    assert failed.value.code == 3
    with pytest.raises(TimeoutError, match="not done after 0.5 s"):
        run_processes([sleeper], timeout=0.5, what="test")
    assert time.monotonic() - start < 20  # the sleepers were killed, not waited for
