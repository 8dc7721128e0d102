"""The Gluon model zoo's densenet121 (and 161/169/201), random weights, the standard Gluon loop."""

from __future__ import annotations

import mxnet as mx
from mxnet import autograd, gluon
from mxnet.gluon.model_zoo import vision

from densenet_bench.runners.mx import context, device_used, thread_settings  # same probes as ours
from densenet_bench.timing import Prepared, Request, Unsupported, official_preset, synthetic_batch
from densenet_spec.case import SGDConfig
from densenet_spec.config import spatial_sizes

# imperative: Gluon's default; hybridize: a cached static graph with preallocated memory
VARIANTS = ("imperative", "hybridize")


def prepare(req: Request) -> Prepared:
    name = official_preset(req)
    if req.memory_efficient:
        raise Unsupported("the Gluon model zoo's DenseNet has no memory-efficient mode")
    last = spatial_sizes(req.densenet_config(), req.image_size, req.image_size)["blocks.3"]
    if last != (7, 7):
        raise Unsupported(
            "the Gluon model zoo's DenseNet ends in a fixed 7x7 average pool: use 224x224 images"
        )
    ctx = context(req)
    model = vision.get_model(name, pretrained=False, classes=1000)  # never download weights
    model.initialize(mx.init.Xavier(), ctx=ctx)
    if req.variant == "hybridize":
        model.hybridize(static_alloc=True, static_shape=True)
    x, y = synthetic_batch(req, "NCHW")
    x, y = mx.nd.array(x, ctx=ctx), mx.nd.array(y, ctx=ctx)
    if req.mode == "infer":
        step = lambda: model(x)  # noqa: E731  (outside autograd.record: inference mode)
    else:
        sgd = SGDConfig()
        trainer = gluon.Trainer(
            model.collect_params(),
            "sgd",
            {"learning_rate": sgd.lr, "momentum": sgd.momentum, "wd": sgd.weight_decay},
        )
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

        def step():
            with autograd.record():
                loss = loss_fn(model(x), y).mean()
            loss.backward()
            trainer.step(1)  # the loss is already a mean
            return loss

    return Prepared(
        step=step,
        sync=lambda out: mx.nd.waitall(),
        info={
            "versions": {"mxnet": mx.__version__},
            "threads": thread_settings(),
            "device_name": str(ctx),
        },
        device_peak_bytes=device_used(ctx),
    )
