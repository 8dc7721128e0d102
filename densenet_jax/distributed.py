"""Data-parallel DenseNet on JAX's own engine: shard_map over a device mesh (issue 20).

    <env python> -m densenet_spec.distributed densenet_jax <case folder> <result file>

starts launch(), which runs this module in fresh processes, because the number of CPU devices
is fixed when JAX's backend starts. Two engines, the same computation:

  "sharded" (the default): one process with R CPU devices (jax_num_cpu_devices), a Mesh over
      them and jax.shard_map; the collectives are XLA's in-process all-reduces.
  "processes": R processes with one device each, joined by jax.distributed.initialize
      (coordinator on 127.0.0.1, a free port; CPU collectives over gloo); the same mesh spans
      every process's devices. Pick it with launch(..., engine="processes") or the environment
      variable DENSENET_JAX_ENGINE=processes. Several hosts: docs/data_parallel.md.

Inside shard_map each replica runs the plain model on its shard. Parameters enter replicated
and are cast to per-replica values (lax.pcast) before differentiation, so each replica's
gradient is its own shard's and the all-reduce is the explicit lax.pmean; the SGD-momentum
update (train.make_optimizer's optax chain) then runs identically on every replica. BatchNorm:
"synchronised" builds every BatchNorm as sync_batchnorm.SyncBatchNorm (psum of per-channel
sums over the replica axis; its backward is autodiff through the psum); "per-replica" is the
plain model. Running statistics are per replica (a leading replica axis, sharded); the case's
"buffers" option "broadcast" copies replica 0's to every replica before each step (torch DDP's
default), "local" keeps each replica's own. What the results hold: densenet_spec/replicas.py.

Training (densenet-train --replicas R, densenet_spec/training.py): launch_training starts one
fresh process (`python -m densenet_jax.distributed train JOB`) with R CPU devices, which runs
densenet_spec.training.run_job with ReplicaAdapter: the same Engine and its compiled step
(prepare_training(quantities=False): the loss and the new state only), its state kept as
global arrays between steps; weights, buffers and predictions are replica 0's. Sharded engine
only (DENSENET_JAX_ENGINE=processes is refused for training).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from densenet_jax import train, xla_cpu
from densenet_jax.adapter import Adapter
from densenet_jax.inputs import check_batch, check_input
from densenet_jax.memory_efficient import MemoryEfficientDenseBlock
from densenet_jax.model import DenseNet
from densenet_jax.precision import precision_settings
from densenet_jax.sync_batchnorm import sync_batch_norm
from densenet_jax.weights import LEAVES, _nnx_path, from_canonical, to_canonical
from densenet_spec.case import Case, read_case, write_results
from densenet_spec.config import check_input_shape
from densenet_spec.distributed import ProcessFailed, free_ports, run_processes
from densenet_spec.errors import (
    DenseNetError,
    DeviceUnavailableError,
    OptimizerStateError,
    UsageError,
    exit_code,
)
from densenet_spec.params import check_momentum_buffers, param_specs, stage_names, trainable_names
from densenet_spec.replicas import check_results, replica_options, running_names

AXIS = "data"
ENGINES = ("sharded", "processes")
ENGINE_ENV = "DENSENET_JAX_ENGINE"


class UnsupportedReplicaCase(DenseNetError):
    """A replica case this engine does not run."""


class TrainingRefused(DenseNetError):
    """launch_training's process stopped with a named error (printed on its stderr)."""


def worker_command(case_dir, out, processes: int = 1, rank: int = 0, coordinator: str = ""):
    cmd = [sys.executable, "-m", "densenet_jax.distributed", str(case_dir), str(out)]
    if processes > 1:
        cmd += ["--processes", str(processes), "--process-id", str(rank)]
        cmd += ["--coordinator", coordinator]
    return cmd


def launch(case_dir, out, *, timeout: float, engine: str | None = None) -> None:
    """Run the case's R replicas on `engine` (default: "processes" for a case with the option
    "processes", else $DENSENET_JAX_ENGINE, else "sharded");
    raise on failure or timeout, every started process killed."""
    case = read_case(case_dir)
    by_case = "processes" if case.options.get("processes") else None  # --replica-processes
    engine = engine or by_case or os.environ.get(ENGINE_ENV, "sharded")
    if engine not in ENGINES:
        raise ValueError(f"{ENGINE_ENV}={engine!r}: one of {', '.join(ENGINES)}")
    replicas, _, _ = replica_options(case)
    env = dict(os.environ)
    if case.device == "cpu":  # no accelerator plugin may claim the devices
        env.setdefault("JAX_PLATFORMS", "cpu")
    if engine == "sharded":
        commands = [worker_command(case_dir, out)]
    else:
        coordinator = f"127.0.0.1:{free_ports()[0]}"
        commands = [
            worker_command(case_dir, out, replicas, r, coordinator) for r in range(replicas)
        ]
    run_processes([(c, env) for c in commands], timeout, f"jax {engine}")


def launch_training(job_dir, *, timeout: float) -> None:
    """densenet-train --replicas R (densenet_spec.training.main calls it): the job in a fresh
    process with R devices (their number is fixed when JAX's backend starts), running
    densenet_spec.training.run_job with ReplicaAdapter on the sharded engine. The environment
    (XLA_FLAGS: the JAX env's parity flags) passes on. Raise on failure or timeout."""
    engine = os.environ.get(ENGINE_ENV, "sharded")
    if engine != "sharded":
        raise UnsupportedReplicaCase(
            f"{ENGINE_ENV}={engine!r}: densenet-train --replicas runs on the sharded engine only"
        )
    job = json.loads((Path(job_dir) / "job.json").read_text())
    env = dict(os.environ)
    if job["device"] == "cpu":  # no accelerator plugin may claim the devices
        env.setdefault("JAX_PLATFORMS", "cpu")
    cmd = [sys.executable, "-m", "densenet_jax.distributed", "train", str(job_dir)]
    try:
        run_processes([(cmd, env)], timeout, "jax training")
    except ProcessFailed as e:
        if e.code == 2:  # a named refusal (its message above): exit 2 here too
            raise TrainingRefused(f"the training process refused the job ({e})") from None
        raise


def configure(case: Case, processes: int, rank: int, coordinator: str) -> None:
    """JAX settings before its backend starts: devices, collectives, precision."""
    replicas, _, _ = replica_options(case)
    if replicas % processes:
        raise UnsupportedReplicaCase(f"{replicas} replicas do not split over {processes} processes")
    for name, value in precision_settings(case.device, case.dtype).items():
        jax.config.update(name, value)
    if case.device == "cpu":
        jax.config.update("jax_num_cpu_devices", replicas // processes)
    if processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=processes, process_id=rank
        )


class Engine:
    """A case's model, split into its graph and state, and its mesh of R devices."""

    def __init__(self, case: Case):
        self.case = case
        self.replicas, self.bn_sync, self.buffers = replica_options(case)
        try:
            devices = jax.devices(case.device)
        except RuntimeError as e:  # "Unknown backend gpu"
            raise DeviceUnavailableError(f"jax: no {case.device} device ({e})") from e
        if len(devices) != self.replicas:
            raise UnsupportedReplicaCase(
                f"the case asks for {self.replicas} replicas, JAX has {len(devices)} "
                f"{case.device} devices"
            )
        self.mesh = Mesh(np.array(devices), (AXIS,))
        parts = xla_cpu.fast_modules(case.device) if case.variant == "fast" else {}
        if case.memory_efficient:
            parts["dense_block"] = MemoryEfficientDenseBlock
        if self.bn_sync == "synchronised":
            parts["norm_layer"] = sync_batch_norm(AXIS)
        dtype = jnp.dtype(case.dtype)
        self.model = nnx.eval_shape(lambda: DenseNet(case.config, dtype=dtype, **parts))
        from_canonical(self.model, case.params)

    # Arrays in and out: global arrays built from the full host data on every process.

    def put(self, tree, spec):
        sharding = NamedSharding(self.mesh, spec)

        def one(a):
            a = np.asarray(a)
            return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

        return jax.tree.map(one, tree)

    def batch(self, a: np.ndarray):
        a = np.asarray(a)
        if a.ndim == 4:
            a = np.ascontiguousarray(a.transpose(0, 2, 3, 1))  # NCHW -> NHWC
        return self.put(a, P(AXIS))

    @staticmethod
    def host(a) -> np.ndarray:
        """A replicated global array's value (this process's copy)."""
        return np.asarray(a.addressable_data(0))

    def features(self, a) -> np.ndarray:
        """A replicated batch of features (or images) on the host, NHWC -> NCHW."""
        a = self.host(a)
        return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a

    def replicated(self, tree):
        """Global arrays resharded to a full copy on every device (an all-gather by XLA)."""
        return jax.jit(lambda t: t, out_shardings=NamedSharding(self.mesh, P()))(tree)

    def split(self, training: bool):
        if training:
            self.model.train()
        else:
            self.model.eval()
        return nnx.split(self.model, nnx.Param, nnx.BatchStat)

    def shard_map(self, fn, in_specs, out_specs):
        return jax.jit(jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs))

    # The quantities.

    def eval_stages(self, x, y) -> tuple[dict, np.ndarray]:
        """Eval mode: every stage (shards concatenated) and the mean of the shard losses."""
        graphdef, params, stats = self.split(training=False)

        def body(params, stats, x, y):
            stages = nnx.merge(graphdef, params, stats).stage_outputs(x)
            return stages, jax.lax.pmean(train.loss_fn(stages["logits"], y), AXIS)

        fn = self.shard_map(body, (P(), P(), P(AXIS), P(AXIS)), (P(AXIS), P()))
        stages, loss = fn(*self.put((params, stats), P()), self.batch(x), self.batch(y))
        stages = self.replicated(stages)
        return {k: self.features(v) for k, v in stages.items()}, self.host(loss).reshape(1)

    def prepare_training(self, quantities: bool = True) -> None:
        """Compile the data-parallel train step and set up its state (replicated parameters and
        optimizer state, per-replica running statistics with a leading replica axis).

        self.step(state, x, y) with quantities: (stages, mean shard loss, d L_dp / d x, the
        all-reduced gradients, the new state); without (ReplicaAdapter's training step): (mean
        shard loss, the new state)."""
        replicas, broadcast = self.replicas, self.buffers == "broadcast"
        graphdef, params, stats = self.split(training=True)
        self.tx = tx = train.make_optimizer(self.model, self.case.sgd).tx

        def body(params, opt_state, stats, x, y):
            """One replica's step: its shard's train-mode stages, the mean shard loss, its
            part of d L_dp / d x, the all-reduced gradients, and the updated state."""
            stats = jax.tree.map(lambda s: s[0], stats)  # this replica's running statistics
            if broadcast:  # replica 0's, on every replica
                stats = jax.tree.map(lambda s: jax.lax.all_gather(s, AXIS)[0], stats)

            def loss_of(params, x):
                model = nnx.merge(graphdef, params, stats, copy=True)
                stages = model.stage_outputs(x)
                loss = train.loss_fn(stages["logits"], y)
                return loss, (stages, nnx.state(model, nnx.BatchStat))

            argnums = (0, 1) if quantities else 0
            grad_fn = jax.value_and_grad(loss_of, argnums=argnums, has_aux=True)
            (loss, (stages, stats)), grads = grad_fn(per_replica(params), x)
            grads, grad_x = grads if quantities else (grads, None)
            grads = jax.lax.pmean(grads, AXIS)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = jax.tree.map(lambda p, u: p + u, params, updates)  # optax.apply_updates
            stats = jax.tree.map(lambda s: s[None], stats)
            loss = jax.lax.pmean(loss, AXIS)
            if not quantities:
                return loss, (params, opt_state, stats)
            return stages, loss, grad_x / replicas, grads, (params, opt_state, stats)

        specs = (P(), P(), P(AXIS))  # parameters, optimizer state, running statistics
        out_specs = (P(AXIS), P(), P(AXIS), P(), specs) if quantities else (P(), specs)
        self.step = self.shard_map(
            lambda state, x, y: body(*state, x, y), (specs, P(AXIS), P(AXIS)), out_specs
        )
        stacked = jax.tree.map(lambda s: np.stack([np.asarray(s)] * replicas), stats)
        self.initial = (*self.put((params, tx.init(params)), P()), self.put(stacked, P(AXIS)))

    def train_pass(self, x, y) -> tuple[dict, np.ndarray, np.ndarray, dict]:
        """Train mode from the case's state: stages, mean shard loss, d L_dp / d x, and the
        all-reduced gradients (canonical names)."""
        stages, loss, grad_x, grads, _ = self.step(self.initial, self.batch(x), self.batch(y))
        stages, grad_x = self.replicated((stages, grad_x))
        stages = {k: self.features(v) for k, v in stages.items()}
        grads = jax.tree.map(lambda g: jnp.asarray(self.host(g)), grads)
        grad_x = self.features(grad_x)
        return stages, self.host(loss).reshape(1), grad_x, to_canonical(self.model, grads)

    def sgd_steps(self) -> tuple[list[dict], float]:
        """Every replica's state after case.steps data-parallel steps, and the largest
        difference between replicas' parameters (0: the update is identical everywhere)."""
        case, state = self.case, self.initial
        for k in range(case.steps):
            *_, state = self.step(state, self.batch(case.step_x[k]), self.batch(case.step_y[k]))
        params, _, stats = state

        def copies(params):  # every device's own copy of the parameters, stacked
            return jax.tree.map(lambda p: p[None], per_replica(params))

        every_params = self.replicated(self.shard_map(copies, P(), P(AXIS))(params))
        every_params = jax.tree.map(self.host, every_params)
        every_stats = jax.tree.map(self.host, self.replicated(stats))
        states = []
        for r in range(self.replicas):
            replica = partial(np.take, indices=r, axis=0)  # replica r's slice
            nnx.update(self.model, jax.tree.map(replica, every_params))
            nnx.update(self.model, jax.tree.map(replica, every_stats))
            states.append(to_canonical(self.model))
        names = trainable_names(case.config)
        spread = max(float(np.max(np.abs(s[n] - states[0][n]))) for s in states for n in names)
        return states, spread


def per_replica(tree):
    """Replicated values as each replica's own (lax.pcast to varying): differentiating them
    gives each replica its own shard's gradient, all-reduced explicitly afterwards."""
    return jax.tree.map(lambda a: jax.lax.pcast(a, AXIS, to="varying"), tree)


def run_case(case: Case) -> tuple[dict, dict]:
    """Every quantity of the replica case (replicas.result_keys), and the run's info."""
    engine = Engine(case)
    out: dict[str, np.ndarray] = {}
    x, y, q, names = case.x, case.y, case.quantities, stage_names(case.config)
    if "eval" in q:
        stages, out["loss/eval"] = engine.eval_stages(x, y)
        out.update({f"eval/{k}": stages[k] for k in names})
    spread = None
    if {"train", "grad", "step"} & set(q):
        engine.prepare_training()  # one compiled step serves all three
        stages, loss, grad_x, grads = engine.train_pass(x, y)
        if "train" in q:
            out.update({f"train/{k}": stages[k] for k in names})
            out["loss/train"] = loss
        if "grad" in q:
            out["train_grad/input"] = grad_x
            out.update({f"train_grad/{n}": grads[n] for n in trainable_names(case.config)})
    if "step" in q:
        states, spread = engine.sgd_steps()
        out.update({f"step/{s.name}": states[0][s.name] for s in param_specs(case.config)})
        for r in range(1, engine.replicas):
            out.update({f"step/replica{r}/{n}": states[r][n] for n in running_names(case.config)})
    info = {
        "engine": "jax.shard_map over a Mesh",
        "backend": jax.default_backend(),
        "collectives": (
            jax.config.jax_cpu_collectives_implementation
            if jax.process_count() > 1
            else "in-process"
        ),
        "replicas": engine.replicas,
        "processes": jax.process_count(),
        "bn_sync": engine.bn_sync,
        "buffers": engine.buffers,
        "broadcast_buffers": engine.buffers == "broadcast",
        "parameter_spread": spread,  # max |param(replica r) - param(replica 0)| after the steps
        "memory_efficient": case.memory_efficient,
        "variant": case.variant,
        "device": case.device,
        "devices": [str(d) for d in engine.mesh.devices.flat],
        "dtype": case.dtype,
        "x64": bool(jax.config.jax_enable_x64),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
        "python": platform.python_version(),
    }
    return out, info


class ReplicaModel:
    """What ReplicaAdapter.build gives densenet_spec.training: the replicas' state as global
    arrays on the mesh, the parameters replicated and the running statistics with a leading
    replica axis (sharded), as Engine.step takes them."""

    def __init__(self, params, stats):
        self.params, self.stats = params, stats
        self.replica0 = None  # device 0's copy of replica 0's (params, stats), for predict


class ReplicaOptimizer:
    """train.make_optimizer's optax state, replicated on the mesh (Engine.step's)."""

    def __init__(self, state):
        self.state = state


class ReplicaAdapter(Adapter):
    """densenet_spec.training's adapter for a data-parallel job on the sharded engine: whole
    batches in, each train_step one Engine.step of R replicas (shards: equal contiguous parts,
    gradients pmean'd, train.make_optimizer's SGD on every replica), the mean of the replicas'
    shard losses out. predict, to_canonical and optimizer_state are replica 0's; the momentum
    buffers and the rate are one replicated state, so loading or setting them holds for every
    replica. The process needs R devices of case.device before JAX's backend starts
    (launch_training starts it so)."""

    def __init__(self, case: Case):
        super().__init__(case)  # the precision settings (x64) before any array is made
        self.engine = Engine(case)
        self.engine.prepare_training(quantities=False)
        self.writes = True  # one process writes (launch_training starts one)
        self.eval_fn = None
        self.info |= {
            "engine": "jax.shard_map over a Mesh",
            "replicas": self.engine.replicas,
            "bn_sync": self.engine.bn_sync,
            "buffers": self.engine.buffers,
            "devices": [str(d) for d in self.engine.mesh.devices.flat],
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        }

    def build(self) -> ReplicaModel:
        params, _, stats = self.engine.initial
        return ReplicaModel(params, stats)

    def make_optimizer(self, model: ReplicaModel) -> ReplicaOptimizer:
        return ReplicaOptimizer(self.engine.initial[1])

    def images(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))  # NCHW -> NHWC

    def labels(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y)

    def train_step(self, model: ReplicaModel, optimizer: ReplicaOptimizer, x, y) -> np.ndarray:
        engine = self.engine
        check_batch(engine.model, x, y, training=True)  # named errors before any state changes
        if len(x) % engine.replicas:
            raise UsageError(
                f"{engine.replicas} replicas: the batch of {len(x)} must split into equal shards"
            )
        shard = (len(x) // engine.replicas, *x.shape[1:])
        check_input_shape(self.case.config, shard, "NHWC", training=True)
        state = (model.params, optimizer.state, model.stats)
        loss, state = engine.step(state, engine.put(x, P(AXIS)), engine.put(y, P(AXIS)))
        model.params, optimizer.state, model.stats = state
        model.replica0 = None
        return engine.host(loss)

    def predict(self, model: ReplicaModel, x) -> jax.Array:
        """Eval-mode logits of replica 0 on device 0 (any batch size: eval mode is per image)."""
        check_input(self.engine.model, x, training=False)
        if self.eval_fn is None:
            graphdef, _, _ = self.engine.split(training=False)
            self.eval_fn = jax.jit(lambda p, s, x: nnx.merge(graphdef, p, s)(x))
        if model.replica0 is None:
            model.replica0 = (
                jax.tree.map(lambda a: a.addressable_data(0), model.params),
                jax.tree.map(lambda a: a.addressable_data(0)[0], model.stats),
            )
        device = self.engine.mesh.devices.flat[0]
        return self.eval_fn(*model.replica0, jax.device_put(x, device))

    def to_canonical(self, model: ReplicaModel) -> dict[str, np.ndarray]:
        """Replica 0's parameters and running statistics."""
        nnx.update(self.engine.model, jax.tree.map(Engine.host, model.params))
        nnx.update(self.engine.model, jax.tree.map(lambda a: Engine.host(a)[0], model.stats))
        return to_canonical(self.engine.model)

    def optimizer_state(self, model: ReplicaModel, optimizer: ReplicaOptimizer) -> dict:
        """The momentum buffers (sgd.py: optax.trace's), canonical names and layout."""
        trace = jax.tree.map(Engine.host, _trace_state(optimizer.state).trace)
        return to_canonical(self.engine.model, trace)

    def load_optimizer_state(
        self, model: ReplicaModel, optimizer: ReplicaOptimizer, buffers: dict
    ) -> None:
        """The same buffers on every replica; validated in full before anything changes."""
        config = self.case.config
        check_momentum_buffers(buffers, config)
        dtype = jnp.dtype(self.case.dtype)
        trace = jax.tree.map(Engine.host, _trace_state(optimizer.state).trace)  # a host copy
        flat = dict(nnx.to_flat_state(trace))
        for spec in param_specs(config):
            if spec.trainable:
                _, axes = LEAVES[spec.kind]
                value = np.asarray(buffers[spec.name], dtype)
                flat[_nnx_path(spec)].set_value(value if axes is None else value.transpose(axes))
        trace = self.engine.put(trace, P())

        def replace(inject):
            inner = tuple(
                s._replace(trace=trace) if isinstance(s, optax.TraceState) else s
                for s in inject.inner_state
            )
            return inject._replace(inner_state=inner)

        optimizer.state = _with_inject_state(optimizer.state, replace)

    def set_lr(self, optimizer: ReplicaOptimizer, lr: float) -> None:
        """The rate of the next step: the injected hyperparameter, replicated (no recompiling)."""

        def replace(inject):
            rate = inject.hyperparams["learning_rate"]
            rate = self.engine.put(np.asarray(lr, rate.dtype), P())
            return inject._replace(hyperparams={**inject.hyperparams, "learning_rate": rate})

        optimizer.state = _with_inject_state(optimizer.state, replace)

    def to_numpy(self, t) -> np.ndarray:
        return np.asarray(t)  # logits and losses: no image layout to undo


def _with_inject_state(opt_state: tuple, fn) -> tuple:
    """train.make_optimizer's chain state with its inject_hyperparams state replaced by fn's."""
    _inject_state(opt_state)  # a named error if there is none
    return tuple(
        fn(s) if isinstance(s, optax.InjectStatefulHyperparamsState) else s for s in opt_state
    )


def _inject_state(opt_state: tuple):
    for s in opt_state:  # chain: (add_decayed_weights, inject_hyperparams(sgd))
        if isinstance(s, optax.InjectStatefulHyperparamsState):
            return s
    raise OptimizerStateError("the optimizer is not train.make_optimizer's (no injected rate)")


def _trace_state(opt_state: tuple) -> optax.TraceState:
    for s in _inject_state(opt_state).inner_state:
        if isinstance(s, optax.TraceState):
            return s
    raise OptimizerStateError("the optimizer keeps no momentum trace (optax.trace)")


def run_training(job_dir) -> int:
    """launch_training's process: R CPU devices before JAX's backend starts, then
    densenet_spec.training.run_job with ReplicaAdapter."""
    from densenet_spec.training import run_job

    job = json.loads((Path(job_dir) / "job.json").read_text())

    def run() -> None:
        if job["device"] == "cpu":
            jax.config.update("jax_num_cpu_devices", int(job["replicas"]["replicas"]))
        run_job("densenet_jax", job_dir)

    return exit_code(run)  # a named refusal exits 2 with its message (densenet_spec.training)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"] and len(argv) == 2:  # launch_training's process
        return run_training(argv[1])
    parser = argparse.ArgumentParser(prog="python -m densenet_jax.distributed")
    parser.add_argument("case_dir")
    parser.add_argument("out")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--coordinator", default="", help="HOST:PORT of process 0")
    args = parser.parse_args(argv)
    case = read_case(args.case_dir)
    try:
        configure(case, args.processes, args.process_id, args.coordinator)
        start = time.perf_counter()
        results, info = run_case(case)
    except DenseNetError as e:  # a named refusal: its message, exit 2 (densenet_spec.worker)
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        info["seconds"] = round(time.perf_counter() - start, 3)
        results = {k: np.asarray(v, dtype=case.dtype) for k, v in results.items()}
        check_results(case, results)
        write_results(args.out, results, info)
    if args.processes > 1:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
