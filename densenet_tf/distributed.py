"""Data-parallel DenseNet on TensorFlow's own engine, tf.distribute (issue 20).

    <env python> -m densenet_spec.distributed densenet_tf <case folder> <result file>

calls launch(), which runs main() below in fresh processes (bounded by the timeout, all killed
on failure). Two engines, picked by launch(engine=) or DENSENET_TF_DISTRIBUTE (the harness's way):

    mirrored (default)  one process, MirroredStrategy over R logical CPU devices (or R GPUs);
                        logical devices exist only if set before the runtime starts, hence
                        the fresh process
    multi-worker        R processes on 127.0.0.1, one replica each, MultiWorkerMirroredStrategy
                        from each one's TF_CONFIG (several hosts: docs/data_parallel.md)

"synchronised" BatchNorm is sync_batchnorm.SyncBatchNormalization; "per-replica" the plain
model. Each replica's gradient (plus the coupled weight decay, as train.py) is divided by R and
Keras's optimizer all-reduces it as a sum: the mean.

densenet-train --replicas R (densenet_spec.training) runs on the mirrored engine: launch_training()
starts one fresh process (`python -m densenet_tf.distributed train JOB`) that makes the strategy
first, then runs densenet_spec.training.run_job with ReplicaAdapter, whose train_step is the
parity cases' compiled step (ReplicaStep) over the batch's shards.

Running statistics: Keras 3 creates them with aggregation "none", so under a strategy they are
MirroredVariables (ON_WRITE, aggregation NONE) with one component per replica; an assign in
replica context writes the replica's own component only, so each replica's statistics follow
its shard (the "local" policy) and a cross-replica read sees replica 0's. "broadcast" (torch
DDP's default) copies replica 0's into every replica's before each step (an all-gather, exact).
Results and their comparison: densenet_spec/replicas.py.
"""

from __future__ import annotations

# isort: off
from densenet_tf import precision  # noqa: F401  first: sets TF_ENABLE_ONEDNN_OPTS before TF starts

# isort: on
import json
import os
import platform
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from densenet_spec.case import Case, read_case, write_results
from densenet_spec.distributed import ProcessFailed, free_ports, run_processes
from densenet_spec.errors import DenseNetError, DeviceUnavailableError, UsageError, exit_code
from densenet_spec.params import param_specs, trainable_names
from densenet_spec.replicas import check_results, replica_options, running_names
from densenet_tf import train
from densenet_tf.adapter import Adapter, environment
from densenet_tf.canonical import named_variables, to_canonical_array
from densenet_tf.inputs import check_batch
from densenet_tf.layers import DenseBlock
from densenet_tf.memory_efficient import MemoryEfficientDenseBlock
from densenet_tf.model import DenseNet
from densenet_tf.sync_batchnorm import sync_batch_norm
from densenet_tf.weights import from_canonical

ENGINES = ("mirrored", "multi-worker")
ENGINE_ENV = "DENSENET_TF_DISTRIBUTE"
SUM, MEAN = tf.distribute.ReduceOp.SUM, tf.distribute.ReduceOp.MEAN


# ---------------------------------------------------------------------------------------------
# The launcher (no TensorFlow computation in this process)


def tf_config(ports: list[int], index: int, host: str = "127.0.0.1") -> str:
    """The TF_CONFIG of worker `index` in a cluster of one worker per port on `host`."""
    cluster = {"worker": [f"{host}:{port}" for port in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def launch_commands(
    args: list, replicas: int, engine: str, device: str = "cpu"
) -> list[tuple[list[str], dict]]:
    """(command, extra environment) of every process the engine needs on this machine, each
    running this module with `args`.

    A multi-worker GPU case gives worker r GPU r only; a CPU case hides the GPUs (a worker
    would otherwise take every GPU it sees as a replica)."""
    if engine not in ENGINES:
        raise UsageError(f"{ENGINE_ENV}={engine!r}: one of {', '.join(ENGINES)}")
    cmd = [sys.executable, "-m", "densenet_tf.distributed", *map(str, args)]
    if engine == "mirrored":
        return [(cmd, {})]
    ports = free_ports(replicas)
    return [
        (
            cmd,
            {
                "TF_CONFIG": tf_config(ports, r),
                "CUDA_VISIBLE_DEVICES": str(r) if device == "gpu" else "-1",
            },
        )
        for r in range(replicas)
    ]


def launch(case_dir, out, *, timeout: float, engine: str | None = None) -> None:
    """Run the case's R replicas on `engine` (default: "multi-worker" for a case with the option
    "processes", else $DENSENET_TF_DISTRIBUTE, else "mirrored"); raise on failure or timeout,
    every process killed."""
    case = read_case(case_dir)
    by_case = "multi-worker" if case.options.get("processes") else None  # --replica-processes
    engine = engine or by_case or os.environ.get(ENGINE_ENV) or "mirrored"
    replicas, _, _ = replica_options(case)
    commands = launch_commands([case_dir, out], replicas, engine, case.device)
    run_tf_processes(commands, timeout, f"tf {engine}")


def launch_training(job_dir, *, timeout: float) -> None:
    """densenet-train --replicas R (densenet_spec.training.main calls it): the job in one fresh
    process, MirroredStrategy over R devices made before TensorFlow's runtime starts, then
    densenet_spec.training.run_job with ReplicaAdapter. Raise on failure or timeout (the
    process killed); a named refusal in the process (its message on stderr) is TrainingRefused."""
    engine = os.environ.get(ENGINE_ENV) or "mirrored"
    if engine != "mirrored":
        raise UsageError(
            f"{ENGINE_ENV}={engine!r}: densenet-train --replicas runs on the mirrored engine only"
        )
    try:
        commands = launch_commands(["train", job_dir], 1, engine)
        run_tf_processes(commands, timeout, "tf training")
    except ProcessFailed as e:
        if e.code == 2:
            raise TrainingRefused(f"the training process refused the job ({e})") from None
        raise


class TrainingRefused(DenseNetError):
    """launch_training's process stopped with a named error (printed on its stderr)."""


def run_tf_processes(commands: list[tuple[list[str], dict]], timeout: float, what: str) -> None:
    """densenet_spec.distributed.run_processes with each (command, extra environment) on Keras'
    TensorFlow backend and without an inherited TF_CONFIG."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.pop("TF_CONFIG", None)
    run_processes([(cmd, {**env, **extra}) for cmd, extra in commands], timeout, what)


# ---------------------------------------------------------------------------------------------
# The worker: one process of either engine


def make_strategy(device: str, replicas: int) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy where TF_CONFIG is set, else MirroredStrategy over R devices.

    Must run before anything starts TensorFlow's runtime (logical devices, collectives)."""
    if os.environ.get("TF_CONFIG"):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif device == "gpu":
        gpus = tf.config.list_physical_devices("GPU")
        if len(gpus) < replicas:
            raise DeviceUnavailableError(
                f"tf: {replicas} replicas need {replicas} GPUs, this machine has {len(gpus)}"
            )
        strategy = tf.distribute.MirroredStrategy([f"/GPU:{i}" for i in range(replicas)])
    else:
        cpu = tf.config.list_physical_devices("CPU")[0]
        logical = [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        tf.config.set_logical_device_configuration(cpu, logical)
        strategy = tf.distribute.MirroredStrategy(
            [d.name for d in tf.config.list_logical_devices("CPU")]
        )
    if strategy.num_replicas_in_sync != replicas:
        raise RuntimeError(
            f"the case asks for {replicas} replicas, {type(strategy).__name__} has "
            f"{strategy.num_replicas_in_sync}"
        )
    return strategy


_STRATEGY: list = []  # this process's strategy (one: the devices are fixed once made)


def strategy_for(device: str, replicas: int) -> tf.distribute.Strategy:
    """This process's strategy for R replicas, made once (make_strategy, so the first call
    must come before anything starts TensorFlow's runtime)."""
    if not _STRATEGY:
        try:
            _STRATEGY.append(make_strategy(device, replicas))
        except RuntimeError as e:
            if "cannot be modified after being initialized" not in str(e):
                raise
            raise UsageError(
                "tf: the replicas' devices must be configured before TensorFlow's runtime "
                "starts; run data-parallel training through launch_training (a fresh process)"
            ) from e
    strategy = _STRATEGY[0]
    if strategy.num_replicas_in_sync != replicas:
        raise UsageError(
            f"tf: this process's strategy has {strategy.num_replicas_in_sync} replicas, "
            f"not {replicas}: a new replica count needs a fresh process"
        )
    return strategy


def canonical(value) -> np.ndarray:
    """A stage output (NHWC) in the canonical layout (NCHW); other ranks unchanged."""
    v = np.asarray(value)
    return np.ascontiguousarray(v.transpose(0, 3, 1, 2)) if v.ndim == 4 else v


class Replicas:
    """The case on the strategy's replicas: shards, model builder, gathering."""

    def __init__(self, case: Case, strategy: tf.distribute.Strategy):
        self.case, self.strategy = case, strategy
        self.replicas, self.bn_sync, self.buffers = replica_options(case)
        self.model: DenseNet | None = None  # the latest built, for the info

    def distribute(self, a: np.ndarray):
        """Replica r gets the r-th equal contiguous shard of `a` (on its own device)."""
        n = len(a) // self.replicas

        def shard(context):
            r = context.replica_id_in_sync_group
            return tf.constant(np.ascontiguousarray(a[r * n : (r + 1) * n]))

        return self.strategy.experimental_distribute_values_from_function(shard)

    def images(self, x: np.ndarray):
        return self.distribute(np.moveaxis(np.asarray(x), -3, -1))  # NCHW -> NHWC

    def build(self) -> DenseNet:
        c = self.case
        norm = {"norm_layer": sync_batch_norm} if self.bn_sync == "synchronised" else {}
        block = MemoryEfficientDenseBlock if c.memory_efficient else DenseBlock
        with self.strategy.scope():
            model = DenseNet(c.config, dense_block=block, **norm)
            from_canonical(model, c.params)  # cross-replica assign: every replica's copy
        model.jit_compile = False
        self.model = model
        return model

    def first(self, value):
        """A nest of per-replica values as NumPy: this worker's first replica's (replica 0 on
        worker 0; all-reduced and all-gathered values are the same on every replica)."""
        local = self.strategy.experimental_local_results
        return tf.nest.map_structure(lambda v: local(v)[0].numpy(), value)


def run_quantities(rep: Replicas) -> tuple[dict, dict]:
    """Every result key of the case; the parameter spread after the steps (or None)."""
    case, q = rep.case, rep.case.quantities
    x, y = rep.images(case.x), rep.distribute(np.asarray(case.y))
    out: dict[str, np.ndarray] = {}
    if "eval" in q:
        outputs, loss, _ = forward_backward(rep, x, y, training=False)
        out.update({f"eval/{k}": canonical(v) for k, v in outputs.items()})
        out["loss/eval"] = np.reshape(loss, (1,))
    if "train" in q or "grad" in q:  # one train-mode pass: its stages, loss and gradients
        outputs, loss, grads = forward_backward(rep, x, y, training=True)
        if "train" in q:
            out.update({f"train/{k}": canonical(v) for k, v in outputs.items()})
            out["loss/train"] = np.reshape(loss, (1,))
        if "grad" in q:
            out["train_grad/input"] = canonical(grads.pop("input"))
            out.update({f"train_grad/{n}": to_canonical_array(g) for n, g in grads.items()})
    spread = None
    if "step" in q:
        states = run_steps(rep)
        out.update({f"step/{s.name}": states[s.name][0] for s in param_specs(case.config)})
        for r in range(1, rep.replicas):
            out.update({f"step/replica{r}/{n}": states[n][r] for n in running_names(case.config)})
        spread = max(
            float(np.max(np.abs(states[n] - states[n][:1]))) for n in trainable_names(case.config)
        )
    return out, {"parameter_spread": spread}


def forward_backward(rep: Replicas, x, y, training: bool) -> tuple[dict, np.ndarray, dict]:
    """A fresh model's pass over the replicas' shards: (every stage's output, shards
    concatenated; the mean of the shard losses; in train mode the gradients: "input" each
    replica's input gradient / R, concatenated, and by canonical name the reduced gradient)."""
    model, R = rep.build(), rep.replicas
    named = {n: v for n, v in named_variables(model).items() if v.trainable}

    @tf.function(autograph=False)
    def run(x, y):
        def replica(x, y):
            context = tf.distribute.get_replica_context()
            with tf.GradientTape() as tape:
                tape.watch(x)
                outputs = model.stage_outputs(x, training=training)
                loss = train.loss_fn(outputs["logits"], y)
            mean_loss = context.all_reduce(MEAN, loss)
            if not training:
                return all_gather(context, outputs), mean_loss, {}
            grad_x, grads = tape.gradient(loss, (x, list(named.values())))
            # the optimizer's reduction (run_steps): a sum of each replica's gradient / R
            grads = dict(zip(named, context.all_reduce(SUM, [g / R for g in grads])))
            gathered = all_gather(context, {**outputs, "input": grad_x / R})
            return gathered, mean_loss, grads

        return rep.strategy.run(replica, args=(x, y))

    gathered, loss, grads = rep.first(run(x, y))
    gathered = {k: np.concatenate(v) for k, v in gathered.items()}  # shards in replica order
    return gathered, loss, {**grads, **({"input": gathered.pop("input")} if training else {})}


class ReplicaStep:
    """One data-parallel SGD step of `model` on the replicas, compiled once (tf.function: a
    new learning rate is a variable's new value, not a retrace): replica 0's running
    statistics into every replica's first when the policy is "broadcast", then on each replica
    its shard's forward and backward, the spec's coupled weight decay, and the optimizer's
    all-reduced update. step(x, y) over distributed shards (Replicas.distribute) returns the
    mean of the replicas' shard losses, on every replica."""

    def __init__(self, rep: Replicas, model: DenseNet, optimizer):
        self.rep, self.model, self.optimizer = rep, model, optimizer
        named = named_variables(model)
        self.running = [named[n] for n in running_names(rep.case.config)]
        self.broadcast = tf.function(self._broadcast, autograph=False)
        self.update = tf.function(self._update, autograph=False)

    def __call__(self, x, y):
        if self.rep.buffers == "broadcast":
            self.broadcast()
        return self.update(x, y)

    def _broadcast(self):
        """Replica 0's running statistics into every replica's (the "broadcast" policy)."""

        def replica():
            context = tf.distribute.get_replica_context()
            for v, values in zip(self.running, all_gather(context, self.running)):
                v.assign(values[0])

        self.rep.strategy.run(replica)

    def _update(self, x, y):
        model, optimizer, R = self.model, self.optimizer, self.rep.replicas

        def replica(x, y):
            with tf.GradientTape() as tape:
                loss = train.loss_fn(model(x, training=True), y)
            variables = model.trainable_variables
            grads = tape.gradient(loss, variables)
            with tf.control_dependencies([tf.group(grads)]):  # as train._train_step
                wd = optimizer.coupled_weight_decay
                # Keras's optimizer all-reduces the gradients as a sum: / R makes it the mean
                grads = [(g + wd * v) / R for g, v in zip(grads, variables)]
                optimizer.apply_gradients(zip(grads, variables))
            return tf.distribute.get_replica_context().all_reduce(MEAN, loss)

        return self.rep.strategy.run(replica, args=(x, y))


def run_steps(rep: Replicas) -> dict[str, np.ndarray]:
    """case.steps data-parallel SGD steps; {canonical name: every replica's value, stacked}."""
    case, strategy = rep.case, rep.strategy
    model = rep.build()
    with strategy.scope():
        optimizer = train.make_optimizer(model, case.sgd)
    named = named_variables(model)
    step = ReplicaStep(rep, model, optimizer)

    @tf.function(autograph=False)
    def snapshot():
        def replica():
            return all_gather(tf.distribute.get_replica_context(), list(named.values()))

        return strategy.run(replica)

    for k in range(case.steps):
        step(rep.images(case.step_x[k]), rep.distribute(np.asarray(case.step_y[k])))
    values = rep.first(snapshot())
    return {n: to_canonical_stack(v) for n, v in zip(named, values)}


def all_gather(context: tf.distribute.ReplicaContext, values):
    """Every replica's tensors of the nest `values` (all of one dtype), each stacked on a new
    axis 0 in replica order. One all-gather of the flattened concatenation: a copy, exact, and
    one collective instead of one per tensor."""
    tensors = [tf.convert_to_tensor(v) for v in tf.nest.flatten(values)]
    flat = tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)
    stacked = context.all_gather(tf.expand_dims(flat, 0), axis=0)  # (R, total)
    sizes = [t.shape.num_elements() for t in tensors]
    parts = [
        tf.reshape(p, [-1, *t.shape]) for p, t in zip(tf.split(stacked, sizes, axis=1), tensors)
    ]
    return tf.nest.pack_sequence_as(values, parts)


def to_canonical_stack(stacked: np.ndarray) -> np.ndarray:
    """(R, *Keras shape) -> (R, *canonical shape)."""
    return np.stack([to_canonical_array(v) for v in stacked])


def describe(strategy: tf.distribute.Strategy, model_variable) -> dict:
    """What the info records of the engine and of one running statistic's variable."""
    multi = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    cluster = json.loads(os.environ["TF_CONFIG"])["cluster"] if multi else {}
    inner = getattr(model_variable, "value", model_variable)
    return {
        "engine": "tf.distribute."
        + ("MultiWorkerMirroredStrategy" if multi else type(strategy).__name__),
        "backend": "collectives over gRPC (TF_CONFIG)" if multi else "in-process collectives",
        "workers": len(cluster.get("worker", [])) if multi else 1,
        "cluster": cluster,
        "devices": list(strategy.extended.worker_devices),
        "running_stats_variable": (
            f"{type(inner).__name__}, synchronization {inner.synchronization.name}, "
            f"aggregation {inner.aggregation.name}"
        ),
    }


class ReplicaAdapter(Adapter):
    """densenet_spec.training's adapter for a data-parallel job (densenet-train --replicas R) in
    a launch_training process: the plain Adapter's protocol over whole batches, each train_step
    one ReplicaStep (the parity cases' step) over the batch's equal contiguous shards, replica r
    the r-th. predict, to_canonical and optimizer_state read replica 0's values (a cross-replica
    read of a mirrored variable gives its first component); load_optimizer_state and set_lr
    assign in cross-replica context, which writes every replica's copy. One process: writes."""

    writes = True

    def __init__(self, case: Case):
        replicas, bn_sync, buffers = replica_options(case)
        strategy = strategy_for(case.device, replicas)  # first: before the runtime starts
        self.case, self.jit_compile = case, False  # Replicas.build: tf.function, no XLA
        self.info = environment(case.device, case.dtype)
        keras.config.set_dtype_policy(case.dtype)  # Replicas.build's model in the case's dtype
        self.rep = Replicas(case, strategy)
        self.steps: dict = {}  # (id(model), id(optimizer)) -> (model, optimizer, ReplicaStep)
        self.info |= {
            "memory_efficient": case.memory_efficient,
            "jit_compile": False,
            "kernels": "tf.function",
            "replicas": replicas,
            "bn_sync": bn_sync,
            "buffers": buffers,
        }

    def build(self) -> DenseNet:
        model = self.rep.build()
        running = named_variables(model)[running_names(self.case.config)[0]]
        self.info |= describe(self.rep.strategy, running)
        return model

    def make_optimizer(self, model: DenseNet) -> keras.optimizers.Optimizer:
        with self.rep.strategy.scope():  # mirrored buffers and rate, one copy per replica
            return train.make_optimizer(model, self.case.sgd)

    def train_step(self, model: DenseNet, optimizer, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        R = self.rep.replicas
        if x.shape[0] % R:
            raise UsageError(
                f"--replicas {R}: the batch of {x.shape[0]} must split into equal shards"
            )
        check_batch(model, x, y, training=True)  # before any running statistic moves
        key = (id(model), id(optimizer))
        if key not in self.steps:
            self.steps[key] = (model, optimizer, ReplicaStep(self.rep, model, optimizer))
        step = self.steps[key][2]
        loss = step(self.rep.distribute(np.asarray(x)), self.rep.distribute(np.asarray(y)))
        return self.rep.strategy.experimental_local_results(loss)[0]


def run_training(job_dir) -> int:
    """launch_training's process: the strategy first (R logical devices before the runtime
    starts), then densenet_spec.training.run_job with ReplicaAdapter."""
    from densenet_spec.training import run_job

    job = json.loads((Path(job_dir) / "job.json").read_text())

    def run() -> None:
        strategy_for(job["device"], int(job["replicas"]["replicas"]))
        run_job("densenet_tf", job_dir)

    return exit_code(run)  # a named refusal exits 2 with its message (densenet_spec.training)


@tf.function(autograph=False)
def barrier(strategy: tf.distribute.Strategy) -> None:
    """One all-reduce over every replica."""
    strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(SUM, tf.ones(())))


def worker_index() -> int:
    config = os.environ.get("TF_CONFIG")
    return int(json.loads(config)["task"]["index"]) if config else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"] and len(argv) == 2:  # launch_training's process
        return run_training(argv[1])
    case_dir, out = argv[:2]
    case = read_case(case_dir)
    replicas, bn_sync, buffers = replica_options(case)
    strategy = make_strategy(case.device, replicas)  # first: before the runtime starts
    settings = environment(case.device, case.dtype)
    keras.config.set_dtype_policy(case.dtype)  # every layer and variable in the case's dtype
    start = time.perf_counter()
    rep = Replicas(case, strategy)
    results, extra = run_quantities(rep)
    model = rep.model or rep.build()
    info = {
        **describe(strategy, named_variables(model)[running_names(case.config)[0]]),
        "replicas": strategy.num_replicas_in_sync,
        "bn_sync": bn_sync,
        "buffers": buffers,
        "broadcast_buffers": buffers == "broadcast",
        **extra,  # parameter_spread: max |param(replica r) - param(replica 0)| after the steps
        "memory_efficient": case.memory_efficient,
        "device": case.device,
        "dtype": case.dtype,
        "precision": settings["precision"],
        "versions": settings["versions"],
        "python": platform.python_version(),
        "seconds": round(time.perf_counter() - start, 3),
    }
    if worker_index() == 0:
        results = {k: np.asarray(v, dtype=case.dtype) for k, v in results.items()}
        check_results(case, results)
        write_results(out, results, info)
    barrier(strategy)  # every worker stays until the results are written
    return 0


if __name__ == "__main__":
    # The package's module, not this __main__ copy: run_job imports densenet_tf.distributed,
    # whose ReplicaAdapter must find the strategy that run_training made (_STRATEGY).
    from densenet_tf.distributed import main as package_main

    sys.exit(package_main())
