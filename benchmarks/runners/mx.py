"""Our DenseNet in MXNet Gluon, stepped by densenet_mx.train (imperative, or hybridized)."""

from __future__ import annotations

import os

import mxnet as mx

from benchmarks.timing import Prepared, Request, Unsupported, synthetic_batch
from densenet_mx import train
from densenet_mx.model import DenseNet
from densenet_spec.case import SGDConfig

# imperative: Gluon's default; hybridize: a cached static graph with preallocated memory
VARIANTS = ("imperative", "hybridize")


def prepare(req: Request) -> Prepared:
    ctx = _context(req)
    model = DenseNet(req.densenet_config(), memory_efficient=req.memory_efficient)
    model.initialize(ctx=ctx)
    if req.variant == "hybridize":
        model.hybridize(static_alloc=True, static_shape=True)
    x, y = synthetic_batch(req, "NCHW")
    x, y = mx.nd.array(x, ctx=ctx), mx.nd.array(y, ctx=ctx, dtype="int64")
    if req.mode == "infer":
        step = lambda: train.eval_step(model, x)  # noqa: E731
    else:
        trainer = train.make_optimizer(model, SGDConfig())
        step = lambda: train.train_step(model, trainer, x, y)  # noqa: E731
    return Prepared(
        step=step,
        sync=lambda out: mx.nd.waitall(),  # MXNet's engine runs asynchronously
        info={
            "versions": {"mxnet": mx.__version__},
            "threads": _threads(),
            "device_name": str(ctx),
        },
        device_peak_bytes=_device_used(ctx),
    )


def _context(req: Request):
    if req.device == "gpu":
        if mx.context.num_gpus() == 0:
            raise Unsupported("MXNet sees no GPU")
        return mx.gpu(0)
    return mx.cpu()


def _threads() -> dict:
    keys = ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS", "MXNET_MKLDNN_ENABLED")
    return {k: os.environ.get(k, "default") for k in keys}


def _device_used(ctx):
    """MXNet reports no peak: the device memory in use after the run (free vs total) instead."""
    if ctx.device_type != "gpu":
        return lambda: None

    def used():
        free, total = mx.context.gpu_memory_info(ctx.device_id)
        return total - free

    return used
