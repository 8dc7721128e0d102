"""The model variants the harness and the benchmarks build: "plain" and "fast".

plain: DenseNet(config), Gluon's imperative model as layers.py and model.py write it (the
    spec's running-statistic rule injected, running_stats.py).
fast: MXNet's own fast path, the same on every MXNet backend (CPU and GPU; it is not tuned for
    one): the model hybridized into one cached graph with static memory and static shapes
    (FAST_HYBRIDIZE), and the running-statistic correction's scalings run as one cached graph
    call per step (running_stats.scale_in_one_call) instead of one operator call per statistic.
Both train with train.make_optimizer: float32 weights take MXNet's fused, aggregated SGD kernel
in either variant (Gluon's default "sgd" path), float64 weights the double-precision update.
"""

from __future__ import annotations

from functools import partial

import mxnet as mx

from densenet_mx.model import DenseNet
from densenet_mx.running_stats import RunningStatsCorrection, scale_in_one_call
from densenet_spec.config import DenseNetConfig, check_float_dtype
from densenet_spec.errors import UnknownVariantError
from densenet_spec.frameworks import VARIANTS

# HybridBlock.hybridize settings of the fast variant: one graph, memory and shapes fixed at the
# first call (a new input shape rebuilds it)
FAST_HYBRIDIZE = {"static_alloc": True, "static_shape": True}


def make_model(
    config: DenseNetConfig,
    variant: str = "plain",
    memory_efficient: bool = False,
    *,
    ctx: mx.Context | None = None,
    dtype: str = "float32",
) -> DenseNet:
    """The variant's DenseNet, initialized on ctx (default: CPU) in dtype, ready to run.

    memory_efficient=True raises NotImplementedError (MXNet 1.9 Gluon cannot recompute in
    backward; see layers.DenseBlock). Another variant raises UnknownVariantError, a dtype other
    than float32 / float64 DTypeError (before anything is built).
    """
    dtype = check_float_dtype(dtype, "model")
    if variant not in VARIANTS:
        raise UnknownVariantError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    if variant == "fast":
        fast_correction = partial(RunningStatsCorrection, scale=scale_in_one_call)
        model = DenseNet(config, memory_efficient, running_stats=fast_correction)
    else:
        model = DenseNet(config, memory_efficient)
    model.initialize(ctx=ctx or mx.cpu())
    model.cast(dtype)
    if variant == "fast":
        model.hybridize(**FAST_HYBRIDIZE)
    return model
