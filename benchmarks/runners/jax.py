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
    """Run step(*objects, *args) as a pure jax.jit function of the objects' state.

    Returns (call, lower): call(*args) steps, lower(*args) lowers the jitted function for them."""
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

    return call, lambda *args: pure.lower(holder["state"], *args)


def _memory_analysis(lowered) -> dict:
    """XLA's own account of the compiled step, MiB: temp (every intermediate, one buffer on CPU),
    arguments, outputs, and the part of the outputs aliased to donated arguments. Compiling here
    after the first call costs nothing: jax.jit's cache already holds the executable."""
    stats = lowered.compile().memory_analysis()
    if stats is None:  # a backend without the analysis
        return {}
    fields = {"temp_mb": "temp_size_in_bytes", "argument_mb": "argument_size_in_bytes",
              "output_mb": "output_size_in_bytes", "alias_mb": "alias_size_in_bytes"}
    return {k: round(getattr(stats, v) / 2**20, 1) for k, v in fields.items()}


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
        # eval_step sets eval mode, then runs this nnx.jit function
        lower = lambda: train._eval_step.lower(model, *args)  # noqa: E731
    else:
        objects, step = (model, train.make_optimizer(model, SGDConfig())), train.train_step
        args = (x, y)
        lower = lambda: train._train_step.lower(*objects, *args)  # noqa: E731
    if req.variant == "functional":
        step, lower_functional = _functional(step, *objects)
        objects = ()
        lower = lambda: lower_functional(*args)  # noqa: E731
    # Filled by the first (compiling) call: the runner records this dict in the result as it
    # stands after the timed steps.
    xla_memory: dict = {}

    def run():
        out = step(*objects, *args)
        if not xla_memory:
            xla_memory.update(_memory_analysis(lower()) or {"unavailable": True})
        return out

    return Prepared(
        step=run,
        # one executable computes the loss and the new state, so its output is ready last
        sync=jax.block_until_ready,
        info={
            "versions": {"jax": jax.__version__, "flax": flax.__version__},
            "threads": {"xla_flags": os.environ.get("XLA_FLAGS", "")},
            "device_name": f"{dev.platform}:{dev.device_kind}",
            "xla_memory": xla_memory,
        },
        device_peak_bytes=lambda: (dev.memory_stats() or {}).get("peak_bytes_in_use"),
    )

