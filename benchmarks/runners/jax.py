"""Our DenseNet in Flax NNX, stepped by densenet_jax.train (always compiled: nnx.jit)."""

from __future__ import annotations

import os
from functools import partial

import flax
import jax
import numpy as np
from flax import nnx

from benchmarks.timing import Prepared, Request, Unsupported, synthetic_batch
from densenet_jax import train
from densenet_jax.model import DenseNet
from densenet_spec.case import SGDConfig

# jit: train.py's nnx.jit steps, which walk the module graph in Python on every call;
# functional: nnx.split once, then a plain jax.jit over the state (donated), no per-call walk.
VARIANTS = ("jit", "functional")


def _functional(step, *objects):
    """Run step(*objects, *args) as a pure jax.jit function of the objects' state."""
    graphdef, state = nnx.split(objects)
    holder = {"state": state}

    @partial(jax.jit, donate_argnums=0)
    def pure(state, *args):
        merged = nnx.merge(graphdef, state)
        out = step(*merged, *args)
        return out, nnx.state(merged)

    def call(*args):
        out, holder["state"] = pure(holder["state"], *args)
        return out

    return call


def prepare(req: Request) -> Prepared:
    try:
        dev = jax.devices("gpu" if req.device == "gpu" else "cpu")[0]
    except RuntimeError as e:
        raise Unsupported(f"jax has no {req.device} device: {e}") from None
    with jax.default_device(dev):
        model = DenseNet(req.densenet_config(), req.memory_efficient)
    x, y = synthetic_batch(req, "NHWC")
    x, y = jax.device_put(x, dev), jax.device_put(y.astype(np.int32), dev)
    if req.mode == "infer":
        objects, step = (model,), train.eval_step
        args = (x,)
    else:
        objects, step = (model, train.make_optimizer(model, SGDConfig())), train.train_step
        args = (x, y)
    if req.variant == "functional":
        step = _functional(step, *objects)
        objects = ()
    return Prepared(
        step=lambda: step(*objects, *args),
        # one executable computes the loss and the new state, so its output is ready last
        sync=jax.block_until_ready,
        info={
            "versions": {"jax": jax.__version__, "flax": flax.__version__},
            "threads": {"xla_flags": os.environ.get("XLA_FLAGS", "")},
            "device_name": f"{dev.platform}:{dev.device_kind}",
        },
        device_peak_bytes=lambda: (dev.memory_stats() or {}).get("peak_bytes_in_use"),
    )

