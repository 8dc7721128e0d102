"""Data-parallel DenseNet on torch's own engine: DistributedDataParallel, launched by torchrun.

    <env python> -m densenet_spec.distributed densenet_torch <case folder> <result file>

starts launch(), which runs torchrun on this machine (R processes, gloo on the loopback
interface for CPU, NCCL for GPU); each process runs main() below on its shard. Several hosts:
the same module under torchrun --nnodes (docs/data_parallel.md). What the results hold and what
they are compared with: densenet_spec/replicas.py. densenet-train --replicas R runs the same way:
launch_training() starts torchrun, and each process runs densenet_spec.training.run_job with
ReplicaAdapter (rank 0 writes the metrics and checkpoints).

BatchNorm: "synchronised" builds every BatchNorm as sync_batchnorm.SyncBatchNorm2d (torch's own
SyncBatchNorm refuses CPU tensors); "per-replica" is the plain model. DDP's broadcast_buffers
(forward_sync_buffers since torch 2.13; default True: rank 0's running statistics overwrite
every rank's before each forward) is the case's "buffers" option: "broadcast" (True) or "local"
(False). Train-mode BatchNorm never reads them, so either way only the running statistics of
ranks other than 0 change (reference.replica_sgd_steps); with synchronised BN they are equal.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from densenet_spec.case import Case, read_case, write_results
from densenet_spec.distributed import free_ports, run_processes
from densenet_spec.params import trainable_names
from densenet_spec.replicas import check_results, replica_options, running_names
from densenet_torch import train
from densenet_torch.adapter import Adapter
from densenet_torch.layers import DenseBlock
from densenet_torch.memory_efficient import MemoryEfficientDenseBlock
from densenet_torch.model import DenseNet
from densenet_torch.precision import DTYPES
from densenet_torch.sync_batchnorm import sync_batch_norm
from densenet_torch.weights import from_canonical, to_canonical


def launch_command(args: list, replicas: int, port: int) -> list[str]:
    """torchrun on one host, loopback only: R processes of this module with `args`."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", str(replicas),
        "--master-addr", "127.0.0.1", "--master-port", str(port),
        "-m", "densenet_torch.distributed", *map(str, args),
    ]  # fmt: skip


def launch(case_dir, out, *, timeout: float) -> None:
    """Run the case's R replicas under torchrun; raise on failure or timeout (all killed)."""
    replicas, _, _ = replica_options(read_case(case_dir))
    _torchrun([case_dir, out], replicas, timeout)


def launch_training(job_dir, *, timeout: float) -> None:
    """densenet-train --replicas R: the job's R processes under torchrun, each running
    densenet_spec.training.run_job with ReplicaAdapter; raise on failure or timeout."""
    job = json.loads((Path(job_dir) / "job.json").read_text())
    _torchrun(["train", job_dir], int(job["replicas"]["replicas"]), timeout)


def _torchrun(args: list, replicas: int, timeout: float) -> None:
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    (port,) = free_ports()
    run_processes([(launch_command(args, replicas, port), env)], timeout, "torchrun")


class Replica:
    """One rank's view of a replica case: its shard, its model builder, its collectives."""

    def __init__(self, case: Case):
        self.case = case
        self.replicas, self.bn_sync, self.buffers = replica_options(case)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.world != self.replicas:
            raise RuntimeError(
                f"the case asks for {self.replicas} replicas, torchrun started {self.world}"
            )
        gpu = case.device == "gpu"
        self.device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if gpu else "cpu")
        self.dtype = DTYPES[case.dtype]
        # BatchNorm's collectives get their own group, apart from DDP's gradient buckets.
        self.bn_group = dist.new_group() if self.bn_sync == "synchronised" else None

    def shard(self, a: np.ndarray) -> np.ndarray:
        n = len(a) // self.replicas
        return np.ascontiguousarray(a[self.rank * n : (self.rank + 1) * n])

    def tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.shard(a)).to(self.device)

    def build(self) -> DenseNet:
        c = self.case
        norm = (
            {} if self.bn_sync == "per-replica" else {"norm_layer": sync_batch_norm(self.bn_group)}
        )
        block = MemoryEfficientDenseBlock if c.memory_efficient else DenseBlock
        model = DenseNet(c.config, dense_block=block, **norm).to(self.device, self.dtype)
        from_canonical(model, c.params)
        return model

    def ddp(self, model: DenseNet) -> DistributedDataParallel:
        """DDP; "broadcast": rank 0's buffers overwrite every rank's before each forward
        (broadcast_buffers=True, torch >= 2.13 calls it forward_sync_buffers)."""
        sync = self.buffers == "broadcast"
        new = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        option = "forward_sync_buffers" if new else "broadcast_buffers"
        return DistributedDataParallel(model, **{option: sync})

    def gather(self, arrays: dict) -> dict:
        """{key: every rank's array concatenated in rank order} (the same on every rank)."""
        parts: list = [None] * self.world
        dist.all_gather_object(parts, arrays)
        return {k: np.concatenate([p[k] for p in parts]) for k in arrays}

    def mean(self, value: torch.Tensor) -> np.ndarray:
        t = value.detach().reshape(1).clone()
        dist.all_reduce(t)
        return (t / self.world).cpu().numpy()


def run_rank(case: Case) -> tuple[dict, dict]:
    """This rank's part of every quantity; rank 0's return value holds all of them."""
    rep = Replica(case)
    x, y = rep.tensor(case.x), rep.tensor(case.y)
    numpy = lambda t: t.detach().cpu().contiguous().numpy()  # noqa: E731
    out: dict[str, np.ndarray] = {}
    for mode in ("eval", "train"):
        if mode in case.quantities:
            model = rep.build().train(mode == "train")
            with torch.no_grad():
                stages = model.stage_outputs(x)
            out.update(rep.gather({f"{mode}/{k}": numpy(v) for k, v in stages.items()}))
            out[f"loss/{mode}"] = rep.mean(train.loss_fn(stages["logits"], y))
    if "grad" in case.quantities:
        model = rep.build().train()
        ddp = rep.ddp(model)
        xr = x.detach().clone().requires_grad_(True)
        train.loss_fn(ddp(xr), y).backward()  # DDP averages parameter gradients over ranks
        out.update(rep.gather({"train_grad/input": numpy(xr.grad) / rep.world}))
        named = dict(model.named_parameters())
        out.update({f"train_grad/{n}": numpy(named[n].grad) for n in trainable_names(case.config)})
    spread = None
    if "step" in case.quantities:
        model = rep.build().train()
        ddp = rep.ddp(model)
        optimizer = train.make_optimizer(model, case.sgd)
        for k in range(case.steps):
            optimizer.zero_grad(set_to_none=True)
            train.loss_fn(ddp(rep.tensor(case.step_x[k])), rep.tensor(case.step_y[k])).backward()
            optimizer.step()
        state = to_canonical(model)
        states: list = [None] * rep.world
        dist.all_gather_object(states, state)
        out.update({f"step/{n}": v for n, v in states[0].items()})
        for r in range(1, rep.world):
            out.update({f"step/replica{r}/{n}": states[r][n] for n in running_names(case.config)})
        params = trainable_names(case.config)
        spread = max(float(np.max(np.abs(s[n] - states[0][n]))) for s in states for n in params)
    info = {
        "engine": "torch DistributedDataParallel",
        "backend": dist.get_backend(),
        "replicas": rep.world,
        "bn_sync": rep.bn_sync,
        "broadcast_buffers": rep.buffers == "broadcast",
        "parameter_spread": spread,  # max |param(rank r) - param(rank 0)| after the steps
        "torch": torch.__version__,
        "device": case.device,
        "dtype": case.dtype,
        "python": platform.python_version(),
    }
    return out, info


class ReplicaAdapter(Adapter):
    """densenet_spec.training's adapter for one rank of a data-parallel training job: whole
    batches in, this rank's shard stepped through DDP; only rank 0 writes (writes)."""

    def __init__(self, case: Case):
        super().__init__(case)
        self.replica = Replica(case)
        self.writes = self.replica.rank == 0
        self.info |= {
            "engine": "torch DistributedDataParallel",
            "backend": dist.get_backend(),
            "replicas": self.replica.world,
            "bn_sync": self.replica.bn_sync,
        }

    def build(self) -> DenseNet:
        model = self.replica.build()
        self.ddp_model = self.replica.ddp(model)
        return model

    def train_step(self, model: DenseNet, optimizer, x, y) -> torch.Tensor:
        n, r = len(x) // self.replica.world, self.replica.rank
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = train.loss_fn(self.ddp_model(x[r * n : (r + 1) * n]), y[r * n : (r + 1) * n])
        loss.backward()  # DDP averages the gradients over the ranks
        optimizer.step()
        return torch.from_numpy(self.replica.mean(loss))  # the mean of the shard losses


def run_training(job_dir) -> None:
    """One torchrun process of a training job (launch_training)."""
    from densenet_spec.training import run_job

    job = json.loads((Path(job_dir) / "job.json").read_text())
    dist.init_process_group("nccl" if job["device"] == "gpu" else "gloo")
    try:
        run_job("densenet_torch", job_dir)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if argv[0] == "train":
        run_training(argv[1])
        return 0
    case_dir, out = argv[:2]
    case = read_case(case_dir)
    backend = "nccl" if case.device == "gpu" else "gloo"
    dist.init_process_group(backend)
    try:
        start = time.perf_counter()
        results, info = run_rank(case)
        if dist.get_rank() == 0:
            info["seconds"] = round(time.perf_counter() - start, 3)
            results = {k: np.asarray(v, dtype=case.dtype) for k, v in results.items()}
            check_results(case, results)
            write_results(out, results, info)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
