"""Our DenseNet in Flax NNX (plain or fast model), stepped by densenet_jax.train (compiled)."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import Any

import flax
import jax
import numpy as np
from flax import nnx

from densenet_bench.timing import Prepared, Request, Unsupported, synthetic_batch
from densenet_jax import train
from densenet_jax.variants import make_model
from densenet_spec.case import SGDConfig

# jit: train.py's nnx.jit steps, which walk the module graph in Python on every call;
# functional: nnx.split once, then a plain jax.jit over the state (donated), no per-call walk.
VARIANTS = ("jit", "functional")


def functional(step: Callable, *objects: Any) -> tuple[Callable, Callable]:
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


def memory_analysis(lowered: jax.stages.Lowered) -> dict:
    """XLA's own account of the compiled step, MiB: temp (every intermediate, one buffer on CPU),
    arguments, outputs, and the part of the outputs aliased to donated arguments."""
    stats = lowered.compile().memory_analysis()
    if stats is None:  # a backend without the analysis
        return {"unavailable": True}
    fields = {
        "temp_mb": "temp_size_in_bytes",
        "argument_mb": "argument_size_in_bytes",
        "output_mb": "output_size_in_bytes",
        "alias_mb": "alias_size_in_bytes",
    }
    return {k: round(getattr(stats, v) / 2**20, 1) for k, v in fields.items()}


def prepare(req: Request) -> Prepared:
    try:
        dev = jax.devices("gpu" if req.device == "gpu" else "cpu")[0]
    except RuntimeError as e:
        raise Unsupported(f"jax has no {req.device} device: {e}") from None
    with jax.default_device(dev):
        model = make_model(req.densenet_config(), req.model, req.memory_efficient)
    x, y = synthetic_batch(req, "NHWC")
    x, y = jax.device_put(x, dev), jax.device_put(y.astype(np.int32), dev)
    if req.mode == "infer":
        objects, step, args = (model,), train.eval_step, (x,)
    else:
        objects = (model, train.make_optimizer(model, SGDConfig()))
        step, args = train.train_step, (x, y)
    if req.variant == "functional":
        call, lower = functional(step, *objects)
        run = partial(call, *args)
        analyse = lambda: memory_analysis(lower(*args))  # noqa: E731  (jit's cache has it)
    else:
        run = partial(step, *objects, *args)
        # The same step as one jitted function of the objects' state, compiled again: read after
        # the timed steps, so its time and memory are in no measurement.
        analyse = lambda: memory_analysis(functional(step, *objects)[1](*args))  # noqa: E731
    return Prepared(
        step=run,
        # one executable computes the loss and the new state, so its output is ready last
        sync=jax.block_until_ready,
        info={
            "versions": {"jax": jax.__version__, "flax": flax.__version__},
            "threads": {"xla_flags": os.environ.get("XLA_FLAGS", "")},
            "device_name": f"{dev.platform}:{dev.device_kind}",
        },
        device_peak_bytes=lambda: (dev.memory_stats() or {}).get("peak_bytes_in_use"),
        after=lambda: {"xla_memory": analyse()},
    )
