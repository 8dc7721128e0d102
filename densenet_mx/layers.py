"""DenseNet building blocks in MXNet Gluon (d2l chapter 8.7 names; layout NCHW, channel axis 1).

Every layer is a HybridBlock built with explicit `in_channels`, so no shape is inferred later
(no deferred initialisation) and the channel arithmetic is visible. Blocks have named children
(norm, relu, conv, ...), so the canonical parameter names of densenet_spec.params read off them.
"""

from __future__ import annotations

from functools import lru_cache

import mxnet as mx
import numpy as np
from mxnet import nd
from mxnet.gluon import Parameter, nn

from densenet_spec.config import DenseNetConfig

CHANNEL_AXIS = 1


class _Sequential(nn.HybridBlock):
    """HybridSequential with named children, like torch's nn.Sequential(OrderedDict(...))."""

    def __init__(self, **layers: nn.HybridBlock):
        super().__init__()
        for name, layer in layers.items():
            setattr(self, name, layer)  # Gluon registers a Block attribute as a child
        self._order = tuple(layers)

    def hybrid_forward(self, F, x):
        for name in self._order:
            x = getattr(self, name)(x)
        return x


def batch_norm(num_features: int, config: DenseNetConfig) -> nn.BatchNorm:
    """BatchNorm set to the spec.

    Gluon's epsilon default (1e-5) is the spec's; it is passed anyway. Gluon's momentum is the
    weight of the OLD running statistic, so it is 1 - config.bn_momentum. The rest of the
    running-statistic rule is not a setting: MXNet's CPU kernel averages in the BIASED batch
    variance, in the backward pass (cuDNN on GPU: in the forward pass, unbiased), with its
    momentum rounded to float32. _RunningStatsCorrection turns what the kernel wrote into the
    spec's update once per train step (DenseNet.running_stats_correction, used by train.py).
    """
    return nn.BatchNorm(
        axis=CHANNEL_AXIS,
        momentum=1.0 - config.bn_momentum,  # parity: Gluon weights the old statistic
        epsilon=config.bn_eps,  # parity: the spec's epsilon (Keras' DenseNet uses 1.001e-5)
        in_channels=num_features,
    )


def conv_block(in_channels: int, out_channels: int, config: DenseNetConfig) -> nn.HybridBlock:
    """d2l's conv_block: BN, ReLU, 3x3 conv (pad 1 keeps the spatial size for concatenation)."""
    return _Sequential(
        norm=batch_norm(in_channels, config),
        relu=nn.Activation("relu"),
        conv=nn.Conv2D(out_channels, 3, padding=1, in_channels=in_channels,
                       use_bias=config.conv_bias),
    )


class DenseBlock(nn.HybridBlock):
    """Dense connectivity: each layer sees the concatenation of all earlier feature maps.

    memory_efficient (recompute each layer's BN-ReLU-conv in backward) has no Gluon equivalent
    in MXNet 1.9: there is no checkpoint for imperative or hybridized Gluon blocks, and the
    mirroring switch MXNET_BACKWARD_DO_MIRROR acts only in the symbolic executor
    (Module/simple_bind): it leaves a hybridized DenseNet-121's peak memory unchanged (measured).
    It raises NotImplementedError rather than silently storing everything.
    """

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        config: DenseNetConfig,
        memory_efficient: bool = False,
    ):
        super().__init__()
        if memory_efficient:
            raise NotImplementedError(
                "mx: memory_efficient=True needs recomputation in backward (torch.utils."
                "checkpoint); MXNet 1.9 Gluon has none, and MXNET_BACKWARD_DO_MIRROR applies "
                "only to symbolic Module executors, not to Gluon blocks"
            )
        layer = conv_block if config.bn_size is None else bottleneck_block
        self.layers = nn.HybridSequential()  # used as a list: indexed, never called as a whole
        for j in range(num_layers):
            self.layers.add(layer(in_channels + j * growth_rate, growth_rate, config))
        self.memory_efficient = memory_efficient

    def forward(self, x, features: dict | None = None):
        """features, when given, receives each layer's output under f"layers.{j}"; the block
        then runs layer by layer (a hybridized graph returns arrays, not a dict)."""
        if features is None:
            return super().forward(x)
        return self.hybrid_forward(nd, x, features)

    def hybrid_forward(self, F, x, features: dict | None = None):
        for j, layer in enumerate(self.layers):
            y = layer(x)
            if features is not None:
                features[f"layers.{j}"] = y
            x = F.concat(x, y, dim=CHANNEL_AXIS)
        return x


def transition_block(in_channels: int, out_channels: int, config: DenseNetConfig) -> nn.HybridBlock:
    """Between dense blocks: BN, ReLU, 1x1 conv (compression), 2x2/2 average pool (floor)."""
    return _Sequential(
        norm=batch_norm(in_channels, config),
        relu=nn.Activation("relu"),
        conv=nn.Conv2D(out_channels, 1, in_channels=in_channels, use_bias=config.conv_bias),
        pool=nn.AvgPool2D(pool_size=2, strides=2),
    )


def bottleneck_block(in_channels: int, growth_rate: int, config: DenseNetConfig) -> nn.HybridBlock:
    """DenseNet-B layer: a 1x1 conv to bn_size * k channels bounds the 3x3 conv's input width."""
    mid = config.bn_size * growth_rate
    return _Sequential(
        norm1=batch_norm(in_channels, config),
        relu1=nn.Activation("relu"),
        conv1=nn.Conv2D(mid, 1, in_channels=in_channels, use_bias=config.conv_bias),
        norm2=batch_norm(mid, config),
        relu2=nn.Activation("relu"),
        conv2=nn.Conv2D(growth_rate, 3, padding=1, in_channels=mid, use_bias=config.conv_bias),
    )


class _RunningStatsCorrection:
    """parity: the spec's running-statistic update, made from what MXNet's kernel writes.

    For a batch statistic s (the mean; the variance), a train step makes the kernel write
    r_new = m_k * r_old + (1 - m_k) * s, where m_k = float32(1 - bn_momentum) (the operator keeps
    momentum in a C float: 0.9 becomes 0.89999998, a 1e-7 relative shift of float64 statistics)
    and s is the biased batch variance on CPU, the unbiased one under cuDNN. The spec wants
    m * r_old + (1 - m) * s * f, m = 1 - bn_momentum exactly, f = n / (n - 1) for the unbiased
    rule over a biased kernel ((n - 1) / n the other way round, else 1), n = N * H * W. With
    s = (r_new - m_k * r_old) / (1 - m_k),

        r_spec = a * r_new + b * r_old,   a = (1 - m) * f / (1 - m_k),   b = m - a * m_k.

    The kernel's update is linear in r_old, so the b term needs no snapshot of r_old: scaling
    r_old by c = m / (a * m_k) before the kernel runs and its r_new by a after gives
    a * (m_k * c * r_old + (1 - m_k) * s) = r_spec. A train step is then two in-place scalings
    per statistic, each set in one call (_scale_in_place), in double for float64; for float32
    statistics the op rounds c and a to float32. A factor that is 1 in the statistics' dtype is
    skipped (both for the means, and for the variances if f = 1, when 1 - bn_momentum is a
    float32 number such as 0.5).

    `with model.running_stats_correction(x.shape):` around forward and backward scales by c on
    entering and by a on leaving. The block must contain exactly one kernel update (on CPU:
    backward; MXNet's CPU kernel leaves the statistics alone in a train-mode forward without
    backward). On an exception they are scaled back by 1 / c: a failed forward leaves them as
    they were, to rounding.
    """

    def __init__(self, stats: list[tuple[Parameter, Parameter, int]], config: DenseNetConfig,
                 kernel_unbiased: bool):
        """stats: (running mean, running variance, n) of each BatchNorm."""
        m = 1.0 - config.bn_momentum
        m_k = float(np.float32(m))
        want_unbiased = config.bn_running_var == "unbiased"
        self._before, self._after = [], []  # (statistic, c), (statistic, a)
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
                        None if dtype.type(v) == 1.0 else v for v in (c, a))
                c, a = factors[f_stat, dtype]
                stat = param.data()
                if c is not None:
                    self._before.append((stat, c))
                if a is not None:
                    self._after.append((stat, a))

    def __enter__(self) -> "_RunningStatsCorrection":
        _scale_in_place(self._before)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            _scale_in_place(self._after)
        else:
            for stat, c in self._before:
                stat /= c


def _scale_in_place(items: list[tuple[nd.NDArray, float]]) -> None:
    """stat *= factor for every (stat, factor), as one call of a cached graph.

    The same _mul_scalar per array as `stat *= factor` (the same numbers, bit for bit), but one
    MXNet call instead of ~240, each of which costs ~20 us of Python and engine overhead.
    """
    if items:
        stats, factors = zip(*items)
        _scaling_graph(factors)(*stats, out=list(stats))


@lru_cache(maxsize=16)
def _scaling_graph(factors: tuple[float, ...]) -> nd.CachedOp:
    """A graph whose i-th output is its i-th input times factors[i]; called with out= its inputs
    it writes in place. Keyed by the factors (one set per input shape and dtype), not arrays."""
    return nd.CachedOp(mx.sym.Group([mx.sym.var(f"s{i}") * f for i, f in enumerate(factors)]))
