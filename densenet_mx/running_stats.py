"""parity: the spec's running-statistic update, made from what MXNet's BatchNorm kernel writes.

Injected into DenseNet by default (`running_stats=RunningStatsCorrection`); train.py runs every
train step's forward and backward inside `model.running_stats(x.shape)`.

For a batch statistic s (the mean; the variance), a train step makes the kernel write
r_new = m_k * r_old + (1 - m_k) * s, where m_k = float32(1 - bn_momentum) (the operator keeps
momentum in a C float: 0.9 becomes 0.89999998, a 1e-7 relative shift of float64 statistics) and
s is the biased batch variance on CPU, the unbiased one under cuDNN. The spec wants
m * r_old + (1 - m) * s * f, m = 1 - bn_momentum exactly, f = n / (n - 1) for the unbiased rule
over a biased kernel ((n - 1) / n the other way round, else 1), n = N * H * W. With
s = (r_new - m_k * r_old) / (1 - m_k),

    r_spec = a * r_new + b * r_old,   a = (1 - m) * f / (1 - m_k),   b = m - a * m_k.

The kernel's update is linear in r_old, so the b term needs no snapshot of r_old: scaling r_old by
c = m / (a * m_k) before the kernel runs and its r_new by a after gives
a * (m_k * c * r_old + (1 - m_k) * s) = r_spec. A train step is then two in-place scalings per
statistic, in double for float64; for float32 statistics the op rounds c and a to float32. A
factor that is 1 in the statistics' dtype is skipped (both for the means, and for the variances
if f = 1, when 1 - bn_momentum is a float32 number such as 0.5).

The scalings run one `stat *= factor` per statistic (scale_each), or, in the fast variant, all of
them as one call of a cached graph (scale_in_one_call): the same numbers, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import mxnet as mx
import numpy as np
from mxnet import nd
from mxnet.gluon import Parameter, nn

from densenet_spec.config import DenseNetConfig, check_input_shape, spatial_sizes

Scaling = list[tuple[nd.NDArray, float]]  # (statistic, factor): statistic *= factor


def scale_each(items: Scaling) -> None:
    """stat *= factor for every (stat, factor), one MXNet operator call each."""
    for stat, factor in items:
        stat *= factor


def scale_in_one_call(items: Scaling) -> None:
    """stat *= factor for every (stat, factor), as one call of a cached graph.

    The same _mul_scalar per array as scale_each (the same numbers, bit for bit), but one MXNet
    call instead of one per statistic (about 240 in DenseNet-121), each with its Python and
    engine overhead.
    """
    if items:
        stats, factors = zip(*items)
        _scaling_graph(factors)(*stats, out=list(stats))


class RunningStatsCorrection:
    """`correction(input_shape)`: a context around one train step's forward and backward that
    turns the kernel's running-statistic update into the spec's (see the module docstring)."""

    def __init__(self, model: nn.Block, *, scale: Callable[[Scaling], None] = scale_each):
        self.model = model
        self.scale = scale
        self._stats = {}  # input shape -> [(running mean, running var, n)], once per shape

    def __call__(self, input_shape) -> StepCorrection:
        config = self.model.config
        check_input_shape(config, input_shape, "NCHW", training=True)  # before any change
        shape = tuple(int(s) for s in input_shape)
        if shape not in self._stats:
            self._stats[shape] = [
                (norm.running_mean, norm.running_var, n)
                for norm, n in batch_norm_sizes(self.model, *shape)
            ]
        # MXNet's CPU kernel averages in the biased variance; cuDNN (GPU) the unbiased one.
        kernel_unbiased = self.model.head.norm.running_var.list_ctx()[0].device_type == "gpu"
        return StepCorrection(self._stats[shape], config, kernel_unbiased, self.scale)


class StepCorrection:
    """Scales the running statistics by c on entering and by a on leaving.

    The block must contain exactly one kernel update (on CPU: backward; MXNet's CPU kernel leaves
    the statistics alone in a train-mode forward without backward). On an exception they are
    scaled back by 1 / c: a failed forward leaves them as they were, to rounding.
    """

    def __init__(
        self,
        stats: list[tuple[Parameter, Parameter, int]],
        config: DenseNetConfig,
        kernel_unbiased: bool,
        scale: Callable[[Scaling], None] = scale_each,
    ):
        """stats: (running mean, running variance, n) of each BatchNorm."""
        self.scale = scale
        m = 1.0 - config.bn_momentum
        m_k = float(np.float32(m))
        want_unbiased = config.bn_running_var == "unbiased"
        self.before, self.after = [], []  # (statistic, c), (statistic, a)
        if m_k == 1.0:  # bn_momentum 0: neither the kernel nor the spec updates
            return
        factors = {}  # (f, dtype) -> (c, a), None for a factor that is 1 in that dtype
        for running_mean, running_var, n in stats:
            if want_unbiased == kernel_unbiased:
                f = 1.0
            elif want_unbiased:
                f = n / (n - 1)
            else:
                f = (n - 1) / n
            dtype = np.dtype(running_mean.dtype)  # the scalar ops multiply in this dtype
            for param, f_stat in ((running_mean, 1.0), (running_var, f)):
                if (f_stat, dtype) not in factors:
                    a = (1.0 - m) * f_stat / (1.0 - m_k)
                    c = m / (a * m_k) if m_k else 1.0  # bn_momentum 1: the kernel drops r_old
                    factors[f_stat, dtype] = tuple(  # * 1 is a no-op
                        None if dtype.type(v) == 1.0 else v for v in (c, a)
                    )
                c, a = factors[f_stat, dtype]
                stat = param.data()
                if c is not None:
                    self.before.append((stat, c))
                if a is not None:
                    self.after.append((stat, a))

    def __enter__(self) -> StepCorrection:
        self.scale(self.before)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.scale(self.after)
        else:
            for stat, c in self.before:
                stat /= c


def batch_norm_sizes(model: nn.Block, batch, _, height, width) -> list[tuple[nn.BatchNorm, int]]:
    """Every BatchNorm of a DenseNet with n, the values per channel it averages over: batch x the
    spatial size of its stage (the stem's BN sits after the 7x7/2 conv, before the max-pool)."""
    config = model.config
    sizes = spatial_sizes(config, height, width)
    parts = []
    if config.stem == "imagenet":
        parts.append((model.stem, ((height - 1) // 2 + 1) * ((width - 1) // 2 + 1)))
    for i, block in enumerate(model.blocks):
        h, w = sizes[f"blocks.{i}"]  # a transition's BN runs before its pool
        parts.append((block, h * w))
        if i < len(model.transitions):
            parts.append((model.transitions[i], h * w))
    parts.append((model.head, h * w))  # the last block's size
    norms = [(norm, batch * hw) for part, hw in parts for norm in _batch_norms(part)]
    assert len(norms) == len(_batch_norms(model)), "a BatchNorm outside stem/blocks/head"
    return norms


def _batch_norms(block: nn.Block) -> list[nn.BatchNorm]:
    found = []
    block.apply(lambda b: found.append(b) if isinstance(b, nn.BatchNorm) else None)
    return found


@lru_cache(maxsize=16)
def _scaling_graph(factors: tuple[float, ...]) -> nd.CachedOp:
    """A graph whose i-th output is its i-th input times factors[i]; called with out= its inputs
    it writes in place. Keyed by the factors (one set per input shape and dtype), not arrays."""
    return nd.CachedOp(mx.sym.Group([mx.sym.var(f"s{i}") * f for i, f in enumerate(factors)]))
