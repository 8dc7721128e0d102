"""Data-parallel DenseNet on MXNet's own engine: a Gluon Trainer over a kvstore (issue 20).

    <env python> -m densenet_spec.distributed densenet_mx <case folder> <result file>

Case option "kvstore" picks the engine. "device" (default) or "local": one process, R contexts
(mx.cpu(0), mx.cpu(1), ...; mx.gpu(r) on GPUs), the model's parameters copied to each; every
replica runs its shard and a Gluon Trainer over the kvstore sums the R gradients;
Trainer.step(R) rescales by 1 / R, so the update uses the mean of the replicas' gradients of
their shard-mean losses. "dist_sync": MXNet's parameter-server roles on 127.0.0.1 (a scheduler,
one server, R worker processes of this module, set up by DMLC_* variables as MXNet's
tools/launch.py would; that launcher's dmlc_tracker calls Thread.isAlive, gone since Python
3.9), one replica per worker. MXNet 1.9.1's dist kvstore rounds float64 arrays to float32, so
the workers all-reduce exactly instead: each sends its gradient as three float32 pieces
(hi + mid + lo) in its own slot of one dist_sync pushpull, every worker adds the slots in
float64 in rank order, and a Trainer without kvstore steps. Results travel the same way to the
rank 0 worker, which writes them.

BatchNorm: "per-replica" is the plain model (MXNet's kernel on each context, the spec's running
statistic rule applied per context, running_stats.py); "synchronised" injects
sync_batchnorm.SyncBatchNorm as the norm_layer (MXNet's contrib SyncBatchNorm refuses float64),
summing over the contexts (AllSum) or over the dist_sync workers (ProcessAllSum). Buffers: each
replica holds its own running statistics; "broadcast" copies replica 0's to every replica before
each step (torch DDP's default), "local" leaves them. What the results hold:
densenet_spec/replicas.py.

Training (densenet-train --replicas R, densenet_spec.training): ReplicaAdapter runs the job's
loop on the one-process engine (LocalEngine, kvstore "device"): whole batches in, each
train_step one data-parallel step of the R contexts, exactly the "step" quantity's loop of
run_parts. No processes to launch, so no launch_training: densenet_spec.training runs run_job
with ReplicaAdapter in the worker process itself.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from contextlib import ExitStack, contextmanager
from functools import partial

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from densenet_mx import train
from densenet_mx.adapter import Adapter, environment
from densenet_mx.canonical import parameters
from densenet_mx.inputs import check_batch
from densenet_mx.memory_efficient import UNAVAILABLE
from densenet_mx.model import DenseNet
from densenet_mx.running_stats import RunningStatsCorrection, scale_in_one_call
from densenet_mx.sgd import SpecSGD, load_spec_buffers, spec_buffers
from densenet_mx.sync_batchnorm import AllSum, ProcessAllSum, sync_batch_norm
from densenet_mx.variants import FAST_HYBRIDIZE
from densenet_mx.weights import from_canonical
from densenet_spec.case import Case, read_case, write_results
from densenet_spec.distributed import free_ports, run_processes
from densenet_spec.errors import DeviceUnavailableError, UsageError
from densenet_spec.params import trainable_names
from densenet_spec.replicas import check_results, replica_options, result_keys, running_names

KVSTORES = ("device", "local", "dist_sync")
GATHER_KEY = 1 << 20  # dist_sync keys of the exact all-gathers (the Trainer holds none)
TRAINING_BARRIER_TIMEOUT_S = 600.0  # a synchronised BatchNorm's wait for the other replicas


def kvstore_kind(case: Case) -> str:
    """The case option "kvstore", or dist_sync for a case run a process per replica."""
    kind = case.options.get("kvstore", "dist_sync" if case.options.get("processes") else "device")
    if kind not in KVSTORES:
        raise UsageError(f"kvstore {kind!r}: one of {', '.join(KVSTORES)}")
    return kind


def check_case(case: Case) -> tuple[int, str, str, str]:
    """(replicas, bn_sync, buffers, kvstore) of a case this engine runs; UsageError if not."""
    replicas, bn_sync, buffers = replica_options(case)
    kind = kvstore_kind(case)
    if case.memory_efficient:
        raise UsageError(UNAVAILABLE)
    return replicas, bn_sync, buffers, kind


def contexts(device: str, count: int) -> list[mx.Context]:
    if device == "gpu":
        if mx.context.num_gpus() < count:
            raise DeviceUnavailableError(
                f"mx: {count} replicas need {count} GPUs, {mx.context.num_gpus()} visible"
            )
        return [mx.gpu(r) for r in range(count)]
    return [mx.cpu(r) for r in range(count)]


def worker_gpu(rank: int) -> mx.Context:
    if mx.context.num_gpus() == 0:
        raise DeviceUnavailableError("mx: no gpu device (mx.context.num_gpus() is 0)")
    return mx.gpu(rank % mx.context.num_gpus())


class Replicas:
    """The replicas this process runs (all R, or one dist_sync worker's), and their model."""

    def __init__(self, case: Case, ctxs: list, ranks: list[int], world: int, allsum=None):
        """allsum: the replicas' sum (sync_batchnorm) when BatchNorm is synchronised."""
        self.case = case
        _, self.bn_sync, self.buffers, self.kind = check_case(case)
        self.ctxs, self.ranks, self.world = ctxs, ranks, world
        self.allsum = allsum if self.bn_sync == "synchronised" and world > 1 else None
        sync = self.allsum is not None
        fast = case.variant == "fast"
        running_stats = RunningStatsCorrection  # SyncBatchNorm applies the rule itself
        if sync:
            running_stats = None
        elif fast:
            running_stats = partial(RunningStatsCorrection, scale=scale_in_one_call)
        norm = {"norm_layer": sync_batch_norm(self.allsum)} if sync else {}
        model = DenseNet(case.config, running_stats=running_stats, **norm)
        model.initialize(ctx=ctxs)
        model.cast(case.dtype)
        # SyncBatchNorm meets the other replicas in Python: the model runs imperatively.
        self.hybridize = not sync and bool(case.options.get("hybridize", True))
        model.hybridize(self.hybridize, **(FAST_HYBRIDIZE if fast and self.hybridize else {}))
        self.model = model
        with ctxs[0]:  # Parameter.data() without a context reads the current context's copy
            self.params = parameters(model)
        self.trainable = [self.params[n] for n in trainable_names(case.config)]

    def reload(self) -> None:
        with self.ctxs[0]:  # as in __init__ (a GPU replica set holds no cpu(0) copy)
            from_canonical(self.model, self.case.params)  # every context's copy

    def each(self, fn) -> list:
        """fn(i) for every local replica i: in lockstep threads when BatchNorm is synchronised."""
        if self.allsum is not None:  # threads on one process's contexts, or one replica
            return self.allsum.each(fn)
        return [fn(i) for i in range(len(self.ctxs))]

    def shard(self, a: np.ndarray, i: int) -> np.ndarray:
        n = len(a) // self.world
        r = self.ranks[i]
        return np.ascontiguousarray(a[r * n : (r + 1) * n])

    def images(self, a: np.ndarray) -> list[nd.NDArray]:
        return [
            nd.array(self.shard(a, i), ctx=c, dtype=self.case.dtype)
            for i, c in enumerate(self.ctxs)
        ]

    def labels(self, a: np.ndarray) -> list[nd.NDArray]:
        return [nd.array(self.shard(a, i), ctx=c, dtype="int64") for i, c in enumerate(self.ctxs)]

    @contextmanager
    def running_update(self, shard_shape):
        """The spec's running-statistic rule around forward and backward, on every context
        (running_stats.py); SyncBatchNorm applies it itself."""
        with ExitStack() as stack:
            if self.model.running_stats is not None:
                for ctx in self.ctxs:
                    with ctx:  # StepCorrection reads this context's copies
                        correction = self.model.running_stats(shard_shape)
                    stack.enter_context(correction)
            yield

    def forward_backward(self, x: np.ndarray, y: np.ndarray, input_grad: bool = False):
        """Train-mode forward and one backward over every local replica's shard-mean loss;
        returns (losses, inputs). Each context's gradient is that of the sum of the losses."""
        xs, ys = self.images(x), self.labels(y)
        if input_grad:
            for a in xs:
                a.attach_grad()

        def loss(i):
            with autograd.record():
                return train.loss_fn(self.model(xs[i]), ys[i])

        with self.running_update(xs[0].shape):
            losses = self.each(loss)
            autograd.backward(losses)
        return losses, xs

    def state(self, i: int) -> dict[str, np.ndarray]:
        return {n: p.data(self.ctxs[i]).asnumpy() for n, p in self.params.items()}


class KVStoreSGD(SpecSGD):
    """SpecSGD updating on the kvstore's copy of each weight (update_on_kvstore). A slot that
    load_buffers made before the first step sits on the Parameter's first context; the first
    update moves it to the context of the copy it updates (a device kvstore over GPUs keeps each
    key on one of them)."""

    def create_state(self, index, weight):
        slot = self.slots.get(index)
        if slot is not None and slot.context != weight.context:
            self.slots[index] = slot.as_in_context(weight.context)
        return super().create_state(index, weight)


class LocalEngine:
    """kvstore "device" / "local": every replica in this process."""

    def __init__(self, case: Case, timeout: float):
        replicas = replica_options(case)[0]
        ctxs = contexts(case.device, replicas)
        self.rep = Replicas(case, ctxs, list(range(replicas)), replicas, AllSum(ctxs, timeout))
        self.kind = self.rep.kind

    def mean_grads(self) -> dict[str, np.ndarray]:
        trainer = gluon.Trainer(
            self.rep.trainable,
            "sgd",
            {"learning_rate": 0.0},
            kvstore=self.kind,
            update_on_kvstore=False,
        )
        trainer.allreduce_grads()  # the kvstore's sum, on every context
        names = trainable_names(self.rep.case.config)
        ctx = self.rep.ctxs[0]
        return {
            n: p.grad(ctx).asnumpy() / self.rep.world for n, p in zip(names, self.rep.trainable)
        }

    def make_trainer(self) -> gluon.Trainer:
        sgd = self.rep.case.sgd
        optimizer = KVStoreSGD(momentum=sgd.momentum, learning_rate=sgd.lr, wd=sgd.weight_decay)
        # The update runs once, on the kvstore's copy (SpecSGD keeps one slot per parameter).
        return gluon.Trainer(
            self.rep.trainable, optimizer, kvstore=self.kind, update_on_kvstore=True
        )

    def step(self, trainer: gluon.Trainer) -> None:
        trainer.step(self.rep.world)  # gradients summed by the kvstore, rescaled by 1 / R

    def broadcast_running(self) -> None:
        first = self.rep.ctxs[0]
        for name in running_names(self.rep.case.config):
            p = self.rep.params[name]
            p.set_data(p.data(first).copy())

    def gather(self, parts: list[dict]) -> list[dict]:
        return parts


class DistEngine:
    """kvstore "dist_sync": this worker process is one replica (DMLC_* environment)."""

    def __init__(self, case: Case):
        self.kv = mx.kv.create("dist_sync")
        self.kind = "dist_sync"
        replicas = replica_options(case)[0]
        if self.kv.num_workers != replicas:
            raise RuntimeError(
                f"the case asks for {replicas} replicas, {self.kv.num_workers} workers run"
            )
        # one GPU per worker: a host's workers take its GPUs in rank order
        ctx = contexts(case.device, 1)[0] if case.device == "cpu" else worker_gpu(self.kv.rank)
        self.rep = Replicas(
            case, [ctx], [self.kv.rank], replicas, ProcessAllSum(self.allgather, replicas)
        )
        self._keys = 0

    def allgather(self, arrays: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Every worker's `arrays` (the same shapes on each), [worker][array], exactly: float64
        values travel as three float32 pieces, each worker's in its own slot of one pushpull."""
        flat = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])
        hi = flat.astype(np.float32)
        mid = (flat - hi).astype(np.float32)
        lo = (flat - hi - mid).astype(np.float32)
        world, rank = self.kv.num_workers, self.kv.rank
        buf = np.zeros((world, 3, flat.size), np.float32)
        buf[rank] = hi, mid, lo
        key = GATHER_KEY + self._keys
        self._keys += 1
        self.kv.init(key, nd.zeros(buf.shape, dtype="float32"))
        out = nd.zeros(buf.shape, dtype="float32")
        self.kv.pushpull(key, nd.array(buf, dtype="float32"), out=out)
        pieces = out.asnumpy().astype(np.float64)
        values = (pieces[:, 0] + pieces[:, 1]) + pieces[:, 2]
        result = []
        for w in range(world):
            offsets = np.cumsum([0] + [np.size(a) for a in arrays])
            result.append(
                [
                    values[w, offsets[j] : offsets[j + 1]].reshape(np.shape(a))
                    for j, a in enumerate(arrays)
                ]
            )
        return result

    def summed_grads(self) -> list[np.ndarray]:
        grads = self.allgather([p.grad().asnumpy() for p in self.rep.trainable])
        return [sum(g[j] for g in grads) for j in range(len(self.rep.trainable))]

    def mean_grads(self) -> dict[str, np.ndarray]:
        names = trainable_names(self.rep.case.config)
        return {n: g / self.rep.world for n, g in zip(names, self.summed_grads())}

    def make_trainer(self) -> gluon.Trainer:
        sgd = self.rep.case.sgd
        optimizer = SpecSGD(momentum=sgd.momentum, learning_rate=sgd.lr, wd=sgd.weight_decay)
        return gluon.Trainer(self.rep.trainable, optimizer, kvstore=None)

    def step(self, trainer: gluon.Trainer) -> None:
        dtype = self.rep.case.dtype
        for p, g in zip(self.rep.trainable, self.summed_grads()):
            p.grad()[:] = nd.array(g, ctx=p.grad().context, dtype=dtype)
        trainer.step(self.rep.world)

    def broadcast_running(self) -> None:
        names = running_names(self.rep.case.config)
        first = self.allgather([self.rep.params[n].data().asnumpy() for n in names])[0]
        for n, v in zip(names, first):
            self.rep.params[n].set_data(nd.array(v, dtype=self.rep.case.dtype))

    def gather(self, parts: list[dict]) -> list[dict]:
        (part,) = parts
        keys = sorted(part)
        rows = self.allgather([part[k] for k in keys])
        return [dict(zip(keys, row)) for row in rows]


def run_parts(engine) -> list[dict]:
    """Each local replica's part of every quantity (its shard's, or what every replica holds)."""
    rep = engine.rep
    case = rep.case
    parts: list[dict] = [{} for _ in rep.ctxs]
    numpy = lambda t: t.asnumpy()  # noqa: E731
    for mode in ("eval", "train"):
        if mode in case.quantities:
            rep.reload()
            xs, ys = rep.images(case.x), rep.labels(case.y)

            def run(i, xs=xs, ys=ys, training=mode == "train"):
                with autograd.train_mode() if training else autograd.predict_mode():
                    stages = rep.model.stage_outputs(xs[i])
                    return stages, train.loss_fn(stages["logits"], ys[i])

            for part, (stages, loss) in zip(parts, rep.each(run)):
                part.update({f"{mode}/{k}": numpy(v) for k, v in stages.items()})
                part[f"loss/{mode}"] = numpy(loss).reshape(1)
    if "grad" in case.quantities:
        rep.reload()
        _, xs = rep.forward_backward(case.x, case.y, input_grad=True)
        grads = engine.mean_grads()
        for part, x in zip(parts, xs):
            part["train_grad/input"] = numpy(x.grad) / rep.world
            part.update({f"train_grad/{n}": g for n, g in grads.items()})
    if "step" in case.quantities:
        rep.reload()
        trainer = engine.make_trainer()
        for k in range(case.steps):
            if rep.buffers == "broadcast":
                engine.broadcast_running()
            rep.forward_backward(case.step_x[k], case.step_y[k])
            engine.step(trainer)
        states = [rep.state(i) for i in range(len(rep.ctxs))]
        for part, state in zip(parts, states):
            part.update({f"step/{n}": v for n, v in state.items()})
    return parts


def parameter_spread(case: Case, parts: list[dict]) -> float | None:
    """max |param(replica r) - param(replica 0)| after the steps (0.0: one update everywhere)."""
    if "step" not in case.quantities:
        return None
    keys = [f"step/{n}" for n in trainable_names(case.config)]
    return max(float(np.max(np.abs(p[k] - parts[0][k]))) for p in parts for k in keys)


def combine(case: Case, parts: list[dict]) -> dict[str, np.ndarray]:
    """The result keys from every replica's part, in replica order (replicas.py)."""
    out = {}
    for key in result_keys(case):
        if key.startswith(("eval/", "train/")) or key == "train_grad/input":
            out[key] = np.concatenate([p[key] for p in parts])
        elif key.startswith("loss/"):
            out[key] = np.reshape(np.mean([p[key][0] for p in parts]), (1,))
        elif key.startswith("step/replica"):
            replica, name = key[len("step/replica") :].split("/", 1)
            out[key] = parts[int(replica)][f"step/{name}"]
        else:
            out[key] = parts[0][key]
    return {k: np.ascontiguousarray(v, dtype=case.dtype) for k, v in out.items()}


def compute(case: Case, make_engine) -> tuple[dict | None, dict]:
    """Run the case on this process's replicas (make_engine(case): LocalEngine or DistEngine);
    (results, info), results None on a dist_sync worker other than rank 0."""
    settings = environment(case.device, case.dtype)  # before the first operator runs
    start = time.perf_counter()
    engine = make_engine(case)
    parts = engine.gather(run_parts(engine))
    rep = engine.rep
    info = {
        "engine": "mxnet gluon.Trainer over a kvstore",
        "update": "on the kvstore (update_on_kvstore)"
        if engine.kind != "dist_sync"
        else "each worker's Trainer, on the exactly summed gradients",
        "kvstore": engine.kind,
        "replicas": rep.world,
        "bn_sync": rep.bn_sync,
        "buffers": rep.buffers,
        "batch_norm": "sync_batchnorm.SyncBatchNorm" if rep.allsum else "gluon.nn.BatchNorm",
        "hybridize": rep.hybridize,
        "variant": case.variant,
        "contexts": [str(c) for c in rep.ctxs],
        "parameter_spread": parameter_spread(case, parts),
        "device": case.device,
        "dtype": case.dtype,
        "precision": settings["precision"],
        "versions": settings["versions"] | {"python": platform.python_version()},
        "seconds": round(time.perf_counter() - start, 3),
    }
    if engine.kind == "dist_sync":
        info["allreduce"] = "exact all-gather over dist_sync (float32 pieces), summed in rank order"
        if engine.kv.rank != 0:
            return None, info
    results = combine(case, parts)
    check_results(case, results)
    return results, info


class ReplicaAdapter(Adapter):
    """densenet_spec.training's adapter for a data-parallel training job (densenet-train
    --replicas R): the adapter protocol over whole batches on LocalEngine (one process, R
    contexts, kvstore "device" unless the case option "kvstore" says "local").

    train_step is one step of run_parts' "step" loop: replica 0's running statistics copied to
    every replica ("broadcast"), each replica's forward and backward on its shard (equal
    contiguous parts, replica r the r-th), the kvstore's sum of the gradients, rescaled by 1 / R,
    one SpecSGD update on the kvstore's copy, which every context then holds. The loss returned
    is the mean of the replicas' shard losses. Parameters and momentum buffers are the same on
    every replica, so to_canonical and optimizer_state are replica 0's (its running statistics
    with them), and load_optimizer_state loads the one slot per parameter that every replica's
    update reads. predict runs replica 0 alone: eval mode is per image.
    """

    def __init__(self, case: Case):
        super().__init__(case)  # environment(): before any operator runs
        if kvstore_kind(case) == "dist_sync":
            raise UsageError(
                "mx: data-parallel training runs the one-process engine (kvstore device or "
                "local), not dist_sync"
            )
        self.engine = LocalEngine(case, TRAINING_BARRIER_TIMEOUT_S)
        self.rep = self.engine.rep
        self.ctx = self.rep.ctxs[0]  # images(), labels() and predict() on replica 0's context
        self.info |= {
            "engine": "mxnet gluon.Trainer over a kvstore, one process",
            "update": "on the kvstore (update_on_kvstore)",
            "kvstore": self.engine.kind,
            "replicas": self.rep.world,
            "bn_sync": self.rep.bn_sync,
            "buffers": self.rep.buffers,
            "batch_norm": "sync_batchnorm.SyncBatchNorm"
            if self.rep.allsum
            else "gluon.nn.BatchNorm",
            "hybridize": self.rep.hybridize,
            "contexts": [str(c) for c in self.rep.ctxs],
        }

    def build(self) -> DenseNet:
        self.rep.reload()  # the case's weights and running statistics, on every context
        return self.rep.model

    def make_optimizer(self, model: DenseNet) -> gluon.Trainer:
        return self.engine.make_trainer()

    def train_step(self, model: DenseNet, optimizer: gluon.Trainer, x, y) -> nd.NDArray:
        rep = self.rep
        check_batch(model, x, y, training=True)  # named errors before any state changes
        if x.shape[0] % rep.world:
            raise UsageError(
                f"--replicas {rep.world}: the batch of {x.shape[0]} must split into equal shards"
            )
        if rep.buffers == "broadcast":
            self.engine.broadcast_running()
        losses, _ = rep.forward_backward(x.asnumpy(), y.asnumpy())
        self.engine.step(optimizer)
        return nd.add_n(*(loss.as_in_context(self.ctx) for loss in losses)) / rep.world

    def to_canonical(self, model: DenseNet) -> dict[str, np.ndarray]:
        return self.rep.state(0)

    def optimizer_state(self, model: DenseNet, optimizer: gluon.Trainer) -> dict[str, np.ndarray]:
        with self.ctx:  # Parameter.data() without a context reads the current one's copy
            return spec_buffers(model, optimizer)

    def load_optimizer_state(self, model: DenseNet, optimizer: gluon.Trainer, buffers) -> None:
        with self.ctx:
            load_spec_buffers(model, optimizer, buffers)  # checks the buffers first


def dmlc_environment(role: str, replicas: int, port: int) -> dict:
    """What MXNet's tools/launch.py --launcher local sets, on the loopback interface."""
    return dict(
        os.environ,
        DMLC_ROLE=role,
        DMLC_PS_ROOT_URI="127.0.0.1",
        DMLC_PS_ROOT_PORT=str(port),
        DMLC_NODE_HOST="127.0.0.1",
        DMLC_NUM_SERVER="1",
        DMLC_NUM_WORKER=str(replicas),
        OMP_NUM_THREADS="1",
        MXNET_MKLDNN_ENABLED="0",
        MXNET_STORAGE_FALLBACK_LOG_VERBOSE="0",
    )


def launch_dist(case_dir, out, replicas: int, timeout: float) -> None:
    """A scheduler, one server and R workers of this module on 127.0.0.1, each in its own
    session; all killed when one fails or after `timeout` seconds (TimeoutError)."""
    (port,) = free_ports()
    cmd = [sys.executable, "-m", "densenet_mx.distributed", str(case_dir), str(out)]
    roles = ["scheduler", "server"] + ["worker"] * replicas
    commands = [(cmd, dmlc_environment(role, replicas, port)) for role in roles]
    run_processes(commands, timeout, "mx dist_sync (" + ", ".join(roles) + ")")


def launch(case_dir, out, *, timeout: float) -> None:
    """Run the replica case (densenet_spec.distributed's protocol); raise on failure."""
    case = read_case(case_dir)
    replicas, _, _, kind = check_case(case)
    if kind == "dist_sync":
        launch_dist(case_dir, out, replicas, timeout)
        return
    results, info = compute(case, partial(LocalEngine, timeout=timeout))
    write_results(out, results, info)


def main(argv=None) -> int:
    """A dist_sync worker (DMLC_ROLE=worker; MXNet's scheduler and server roles never get here:
    importing mxnet runs them and exits)."""
    case_dir, out = (sys.argv[1:] if argv is None else argv)[:2]
    case = read_case(case_dir)
    results, info = compute(case, DistEngine)
    if results is not None:
        write_results(out, results, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
