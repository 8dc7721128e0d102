"""Our DenseNet in MXNet Gluon (plain or fast model), stepped by densenet_mx.train (imperative, or
hybridized)."""

from __future__ import annotations

import os
from collections.abc import Callable

import mxnet as mx

from densenet_bench.timing import Prepared, Request, Unsupported, synthetic_batch
from densenet_mx import train
from densenet_mx.variants import make_model
from densenet_spec.case import SGDConfig

# imperative: Gluon's default; hybridize: a cached static graph with preallocated memory. The fast
# model comes hybridized from make_model (variants.FAST_HYBRIDIZE): it runs, and is recorded, as
# hybridize whichever is asked.
VARIANTS = ("imperative", "hybridize")


def prepare(req: Request) -> Prepared:
    ctx = context(req)
    model = make_model(req.densenet_config(), req.model, req.memory_efficient, ctx=ctx)
    hybridized = req.variant == "hybridize" or req.model == "fast"
    if req.variant == "hybridize" and req.model != "fast":
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
            "threads": thread_settings(),
            "device_name": str(ctx),
            "variant": "hybridize" if hybridized else "imperative",  # as run
        },
        device_peak_bytes=device_used(ctx),
    )


def context(req: Request) -> mx.Context:
    if req.device == "gpu":
        if mx.context.num_gpus() == 0:
            raise Unsupported("MXNet sees no GPU")
        return mx.gpu(0)
    return mx.cpu()


def thread_settings() -> dict:
    keys = ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS", "MXNET_MKLDNN_ENABLED")
    return {k: os.environ.get(k, "default") for k in keys}


def device_used(ctx: mx.Context) -> Callable[[], int | None]:
    """MXNet reports no peak: the device memory in use after the run (free vs total) instead."""
    if ctx.device_type != "gpu":
        return lambda: None

    def used():
        free, total = mx.context.gpu_memory_info(ctx.device_id)
        return total - free

    return used
