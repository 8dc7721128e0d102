"""JAX data-parallel (issue 20): SyncBatchNorm under shard_map, and both engines against the
oracle: one process sharded over 2 CPU devices, and 2 processes joined over gloo on 127.0.0.1."""

import sys
import time

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
from densenet_spec import replicas  # noqa: E402
from densenet_spec.case import make_case, read_results, write_case  # noqa: E402
from densenet_spec.compare import assert_close  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.distributed import run as run_distributed  # noqa: E402

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


def test_a_failing_process_ends_every_process(tmp_path):
    """One process exits with an error while the other waits for it: launch raises at once and
    leaves no process behind."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="process 1 exited 3"):
        distributed.run_processes([sleeper, failing], {}, timeout=30)
    with pytest.raises(TimeoutError):
        distributed.run_processes([sleeper], {}, timeout=0.5)
    assert time.monotonic() - start < 20  # the sleepers were killed, not waited for
