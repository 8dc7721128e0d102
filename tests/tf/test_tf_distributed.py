"""TensorFlow data-parallel (issue 20): synchronised BatchNorm, MirroredStrategy over logical CPU
devices and MultiWorkerMirroredStrategy on loopback, against the oracle's replica semantics.

Every strategy runs in fresh processes (densenet_tf.distributed.launch): logical devices and
collectives must be set up before TensorFlow's runtime starts, and this process may have op
determinism on from an earlier test.
"""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from densenet_spec import replicas
from densenet_spec.case import make_case, read_results, write_case
from densenet_spec.compare import assert_close
from densenet_spec.config import get_preset
from densenet_spec.distributed import run as run_distributed
from densenet_tf import distributed
from densenet_tf.batchnorm import BatchNormalization
from densenet_tf.sync_batchnorm import SyncBatchNormalization

LAUNCH_TIMEOUT_S = 300  # a bound for a shared, busy 2-core machine


def _case(tmp_path, bn_sync, buffers, steps=2, quantities=replicas.QUANTITIES):
    base = make_case(get_preset("tiny"), batch=4, image_size=32, steps=steps)
    base = dataclasses.replace(base, quantities=quantities)
    case = replicas.replica_case(base, 2, bn_sync, buffers)
    return case, write_case(case, tmp_path / "case")


def _check(case, results, info, engine, workers):
    assert info["engine"] == f"tf.distribute.{engine}" and info["workers"] == workers
    assert info["replicas"] == 2 and info["bn_sync"] == case.options["bn_sync"]
    assert info["parameter_spread"] == 0.0  # the same parameters on every replica
    assert_close(results, replicas.oracle(case), "float64")
    other = replicas.oracle(replicas.mutation_case(case))  # and not the other semantics
    assert np.max(np.abs(results["train/logits"] - other["train/logits"])) > 1e-3


@pytest.mark.parametrize(
    "bn_sync, buffers, quantities",
    [
        ("synchronised", "broadcast", replicas.QUANTITIES),
        ("per-replica", "local", ("train", "step")),  # the rest: the multi-worker test
    ],
)
def test_mirrored_strategy_matches_the_oracle(tmp_path, bn_sync, buffers, quantities):
    """One process, MirroredStrategy over 2 logical CPU devices (the harness's default path):
    2 steps, every replica's running statistics, float64 within bounds."""
    case, folder = _case(tmp_path, bn_sync, buffers, quantities=quantities)
    out = tmp_path / "result.safetensors"
    run_distributed("densenet_tf", str(folder), str(out), LAUNCH_TIMEOUT_S)
    results, info = read_results(out)
    _check(case, results, info, "MirroredStrategy", 1)
    assert "aggregation NONE" in info["running_stats_variable"]
    if buffers == "local":  # TF's own behaviour: not the broadcast policy's statistics
        broadcast = replicas.replica_case(case, 2, bn_sync, "broadcast")
        key = f"step/replica1/{replicas.running_names(case.config)[0]}"
        assert np.max(np.abs(results[key] - replicas.oracle(broadcast)[key])) > 1e-6


def test_multi_worker_strategy_on_loopback(tmp_path, monkeypatch):
    """Two processes of MultiWorkerMirroredStrategy (TF_CONFIG, 127.0.0.1), selected as the
    harness would (DENSENET_TF_DISTRIBUTE): per-replica BN, every quantity, running statistics
    broadcast from replica 0 across processes."""
    monkeypatch.setenv(distributed.ENGINE_ENV, "multi-worker")
    case, folder = _case(tmp_path, "per-replica", "broadcast")
    out = tmp_path / "result.safetensors"
    run_distributed("densenet_tf", str(folder), str(out), LAUNCH_TIMEOUT_S)
    results, info = read_results(out)
    _check(case, results, info, "MultiWorkerMirroredStrategy", 2)
    assert len(info["cluster"]["worker"]) == 2


def test_launch_kills_every_worker_on_timeout(tmp_path, monkeypatch):
    """A launch past its timeout raises, and none of its processes is left running."""
    started = []
    popen = subprocess.Popen

    def recording(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", recording)
    _, folder = _case(tmp_path, "synchronised", "broadcast", steps=1)
    with pytest.raises(TimeoutError):
        distributed.launch(folder, tmp_path / "r.safetensors", timeout=1, engine="multi-worker")
    assert len(started) == 2 and all(p.poll() is not None for p in started)


def test_unknown_engine_is_a_usage_error(tmp_path):
    _, folder = _case(tmp_path, "synchronised", "broadcast", steps=1)
    with pytest.raises(distributed.UsageError, match="DENSENET_TF_DISTRIBUTE"):
        distributed.launch(folder, tmp_path / "r.safetensors", timeout=1, engine="ring")


# A fresh process: strategy_for must make the 2 logical devices before TF's runtime starts.
RESUME = """
import dataclasses
import numpy as np
from densenet_tf import distributed
strategy = distributed.strategy_for("cpu", 2)
from densenet_spec import reference, replicas
from densenet_spec.case import make_case
from densenet_spec.config import get_preset

base = make_case(get_preset("tiny"), batch=4, image_size=16, steps=4)
case = replicas.replica_case(base, 2, "per-replica", "broadcast")
rates = [0.1, 0.05, 0.2, 0.02]  # set_lr before every step

def run(adapter, model, optimizer, steps):
    losses = []
    for k in steps:
        adapter.set_lr(optimizer, rates[k])
        x, y = adapter.images(case.step_x[k]), adapter.labels(case.step_y[k])
        losses.append(float(adapter.train_step(model, optimizer, x, y)))
    return losses

a = distributed.ReplicaAdapter(case)
model = a.build()
opt = a.make_optimizer(model)
first = run(a, model, opt, [0, 1])
weights, buffers = a.to_canonical(model), a.optimizer_state(model, opt)
rest = run(a, model, opt, [2, 3])
end = a.to_canonical(model)
(_, _, step), = a.steps.values()
assert step.update.experimental_get_tracing_count() == 1  # new rates: no retrace

b = distributed.ReplicaAdapter(dataclasses.replace(case, params=weights))
model_b = b.build()
opt_b = b.make_optimizer(model_b)
b.load_optimizer_state(model_b, opt_b, buffers)
for slot in opt_b.momentums:  # every replica's copy holds the loaded buffer
    first_copy, *others = strategy.experimental_local_results(slot.value)
    assert np.any(first_copy.numpy()) and all(np.array_equal(first_copy, o) for o in others)
assert run(b, model_b, opt_b, [2, 3]) == rest
assert all(np.array_equal(v, end[n]) for n, v in b.to_canonical(model_b).items())

states, momentum, ref = [dict(case.params)] * 2, {}, []
for k in range(4):
    sgd = dataclasses.replace(case.sgd, lr=rates[k])
    states, momentum, loss = reference.replica_sgd_step(
        states, momentum, case.config, case.step_x[k], case.step_y[k], sgd, 2,
        "per-replica", "broadcast")
    ref.append(float(loss))
assert np.max(np.abs(np.array(first + rest) - ref)) < 1e-12, (first + rest, ref)
assert max(float(np.max(np.abs(end[n] - states[0][n]))) for n in end) < 1e-12
"""


def test_replica_adapter_resumes_and_follows_the_oracle():
    """densenet-train --replicas' adapter (ReplicaAdapter): 4 steps at a new rate each (one
    trace) follow the oracle's replica run in float64; replica 0's weights and momentum buffers
    after 2 steps, loaded into a fresh adapter (every replica's buffers), continue bit for bit."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    proc = subprocess.run(
        [sys.executable, "-c", RESUME], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]


@pytest.mark.parametrize("running_var", ["unbiased", "biased"])
def test_sync_batchnorm_on_one_replica_is_batchnorm(running_var):
    """Outside any strategy (one replica): batchnorm.py's forward, backward and running
    statistics, float64."""
    kwargs = dict(epsilon=1e-5, momentum=0.7, running_var=running_var, dtype="float64")
    layers = [cls(**kwargs) for cls in (SyncBatchNormalization, BatchNormalization)]
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(1.0, 2.0, (3, 4, 4, 5)))
    dy = tf.constant(rng.normal(size=(3, 4, 4, 5)))
    outputs = []
    for layer in layers:
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 1.5, 5))
        layer.beta.assign(np.linspace(-1.0, 1.0, 5))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        grads = tape.gradient(y, [x, layer.gamma, layer.beta], output_gradients=dy)
        stats = [layer.moving_mean.numpy(), layer.moving_variance.numpy()]
        outputs.append([y.numpy(), *(g.numpy() for g in grads), *stats])
    for ours, ref in zip(*outputs):
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
