"""JAX data-parallel (issue 20): SyncBatchNorm under shard_map, and both engines against the
oracle: one process sharded over 2 CPU devices, and 2 processes joined over gloo on 127.0.0.1;
ReplicaAdapter (densenet-train --replicas) against the oracle's replica steps, and resumed."""

import dataclasses
import subprocess
import sys

import pytest

pytest.importorskip("jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from densenet_jax import distributed  # noqa: E402
from densenet_jax.batchnorm import BatchNorm  # noqa: E402
from densenet_jax.sync_batchnorm import SyncBatchNorm  # noqa: E402
from densenet_spec import reference, replicas  # noqa: E402
from densenet_spec.case import make_case, read_results, write_case  # noqa: E402
from densenet_spec.compare import assert_close  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.distributed import run as run_distributed  # noqa: E402
from densenet_spec.params import param_specs, trainable_names  # noqa: E402

LAUNCH_TIMEOUT_S = 240  # a bound, not an estimate: past it every process is killed


def replica_case(bn_sync: str, buffers: str = "broadcast", **kwargs):
    base = make_case(get_preset("tiny"), batch=4, image_size=32, **kwargs)
    return replicas.replica_case(base, 2, bn_sync, buffers)


def launch(tmp_path, monkeypatch, case, engine: str):
    """The harness's entry point (it checks every key), the engine picked by the environment."""
    monkeypatch.setenv(distributed.ENGINE_ENV, engine)
    folder = write_case(case, tmp_path / "case")
    out = tmp_path / "result.safetensors"
    run_distributed("densenet_jax", str(folder), str(out), LAUNCH_TIMEOUT_S)
    return read_results(out)


@pytest.mark.parametrize("running_var", ["unbiased", "biased"])
def test_sync_batchnorm_on_one_device_is_batchnorm(running_var):
    """Under shard_map over one device every psum is the identity: forward, backward (input,
    scale, bias) and running statistics are batchnorm.BatchNorm's (float64)."""
    unbiased = running_var == "unbiased"
    kwargs = dict(momentum=0.7, unbiased_running_var=unbiased, param_dtype=jnp.float64)
    ours, ref = SyncBatchNorm(5, axis_name="data", **kwargs), BatchNorm(5, **kwargs)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(1.0, 2.0, (3, 4, 4, 5)))
    dy = jnp.asarray(rng.normal(size=(3, 4, 4, 5)))
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))

    def run(module, sharded):
        graphdef, params, stats = nnx.split(module, nnx.Param, nnx.BatchStat)

        def pullback(params, stats, x):
            def f(params, x):
                m = nnx.merge(graphdef, params, stats, copy=True)
                return m(x), nnx.state(m, nnx.BatchStat)

            y, vjp, new_stats = jax.vjp(f, params, x, has_aux=True)
            return y, vjp(dy), new_stats

        if sharded:
            pullback = jax.shard_map(pullback, mesh=mesh, in_specs=P(), out_specs=P())
        return jax.jit(pullback)(params, stats, x)

    (y, (gp, gx), s), (y0, (gp0, gx0), s0) = run(ours, True), run(ref, False)
    np.testing.assert_allclose(y, y0, rtol=0, atol=1e-13)
    np.testing.assert_allclose(gx, gx0, rtol=0, atol=1e-12)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(gp[name][...], gp0[name][...], rtol=0, atol=1e-12)
    for name in ("mean", "var"):
        np.testing.assert_allclose(s[name][...], s0[name][...], rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    "engine, bn_sync, buffers, memory_efficient",
    [
        ("sharded", "synchronised", "broadcast", True),
        ("processes", "per-replica", "local", False),
    ],
)
def test_engine_matches_the_oracle(
    tmp_path, monkeypatch, engine, bn_sync, buffers, memory_efficient
):
    """Both engines, both BN semantics, both buffer policies, 2 steps: every quantity and every
    replica's running statistics within the float64 bounds, and not the other semantics'.

    sharded: one process, 2 CPU devices, shard_map; memory-efficient layers put synchronised
    BN's psum inside their custom_vjp. processes: jax.distributed on 127.0.0.1, 2 processes of
    one device each, collectives over gloo, each replica's running statistics its own."""
    case = replica_case(bn_sync, buffers, steps=2, memory_efficient=memory_efficient)
    results, info = launch(tmp_path, monkeypatch, case, engine)
    processes, collectives = (1, "in-process") if engine == "sharded" else (2, "gloo")
    assert (info["processes"], info["collectives"], info["replicas"]) == (processes, collectives, 2)
    assert (info["bn_sync"], info["buffers"]) == (bn_sync, buffers)
    assert info["memory_efficient"] == memory_efficient
    assert info["parameter_spread"] == 0.0  # every device's copy of the parameters is the same
    assert_close(results, replicas.oracle(case), "float64")
    other = replicas.oracle(replicas.mutation_case(case))
    assert np.max(np.abs(results["train/logits"] - other["train/logits"])) > 1e-3


# ReplicaAdapter in a process of its own: the 2 CPU devices must be set before JAX's backend
# starts. 3 steps (the rate set to LAST_LR before the third), then a fresh adapter from the
# state after 2 steps (replica 0's weights, the momentum buffers) takes the third again.
LAST_LR = 0.05
REPLICA_TRAINING = f"""
import dataclasses, sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
import numpy as np
from densenet_jax.distributed import ReplicaAdapter
from densenet_spec.case import read_case

case, out = read_case(sys.argv[1]), {{}}

def run(case, steps, buffers=None, prefix=""):
    adapter = ReplicaAdapter(case)
    model = adapter.build()
    optimizer = adapter.make_optimizer(model)
    if buffers is not None:
        adapter.load_optimizer_state(model, optimizer, buffers)
    for k in steps:
        if k == 2:
            adapter.set_lr(optimizer, {LAST_LR})
        x, y = adapter.images(case.step_x[k]), adapter.labels(case.step_y[k])
        out[f"{{prefix}}loss/{{k}}"] = adapter.to_numpy(adapter.train_step(model, optimizer, x, y))
        for n, v in adapter.to_canonical(model).items():
            out[f"{{prefix}}params/{{k}}/{{n}}"] = v
        for n, v in adapter.optimizer_state(model, optimizer).items():
            out[f"{{prefix}}buffers/{{k}}/{{n}}"] = v
    logits = adapter.predict(model, adapter.images(case.x[:3]))
    out[f"{{prefix}}logits"] = adapter.to_numpy(logits)
    return {{k.split("/")[-1]: v for k, v in out.items() if k.startswith(prefix + "params/1/")}}

params = run(case, range(3))
buffers = {{k.split("/")[-1]: v for k, v in out.items() if k.startswith("buffers/1/")}}
run(dataclasses.replace(case, params=params), [2], buffers, prefix="resumed/")
np.savez(sys.argv[2], **out)
"""


def test_replica_adapter_follows_the_oracles_replica_steps(tmp_path):
    """ReplicaAdapter, 2 replicas, per-replica BatchNorm, float64: 3 data-parallel steps (the
    last at a rate set by set_lr) give the loss, replica 0's parameters and running statistics,
    and the momentum buffers of reference.replica_sgd_step, and predict its eval logits. Loaded
    from the state after 2 steps, a fresh ReplicaAdapter takes the third step identically."""
    base = make_case(get_preset("tiny"), batch=8, image_size=16, steps=3, quantities=("step",))
    case = replicas.replica_case(base, 2, "per-replica")
    out = tmp_path / "out.npz"
    proc = subprocess.run(
        [sys.executable, "-c", REPLICA_TRAINING, str(write_case(case, tmp_path / "case")), out],
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr
    got = dict(np.load(out))

    def close(a, b, what):
        err = np.max(np.abs(a - b))
        assert err <= 1e-10 * max(np.max(np.abs(b)), 1e-3), f"{what}: {err:.3g}"

    states, momentum = [case.params] * 2, {}
    for k in range(3):
        sgd = case.sgd if k < 2 else dataclasses.replace(case.sgd, lr=LAST_LR)
        states, momentum, loss = reference.replica_sgd_step(
            states, momentum, case.config, case.step_x[k], case.step_y[k], sgd, 2,
            "per-replica", "broadcast",
        )  # fmt: skip
        close(got[f"loss/{k}"], loss, f"loss {k}")
        for s in param_specs(case.config):
            close(got[f"params/{k}/{s.name}"], states[0][s.name], f"step {k} {s.name}")
        for n in trainable_names(case.config):
            close(got[f"buffers/{k}/{n}"], momentum[n], f"step {k} buffer {n}")
    features, _ = reference.forward_features(states[0], case.config, case.x[:3], False)
    close(got["logits"], features["logits"], "logits")
    resumed = {k.removeprefix("resumed/"): v for k, v in got.items() if k.startswith("resumed/")}
    assert resumed.keys() == {
        k for k in got if k.startswith(("loss/2", "params/2/", "buffers/2/", "logits"))
    }
    for key, value in resumed.items():
        np.testing.assert_array_equal(value, got[key], err_msg=key)
