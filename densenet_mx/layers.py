"""DenseNet building blocks in MXNet Gluon (d2l chapter 8.7 names; layout NCHW, channel axis 1).

Every layer is a HybridBlock built with explicit `in_channels`, so no shape is inferred later and
the channel arithmetic is visible. A HybridSequential runs its children in the order they are
assigned, and the attribute names (norm, relu, conv, ...) are the canonical parameter names.
`norm_layer(num_features, config)` builds every BatchNorm; the default is batch_norm below.
"""

from collections.abc import Callable

from mxnet import nd
from mxnet.gluon import nn

from densenet_mx.memory_efficient import UNAVAILABLE
from densenet_spec.config import DenseNetConfig

CHANNEL_AXIS = 1
NormLayer = Callable[[int, DenseNetConfig], nn.HybridBlock]  # (num_features, config) -> a BatchNorm


def batch_norm(num_features: int, config: DenseNetConfig) -> nn.BatchNorm:
    """BatchNorm set to the spec (the running-variance rule: running_stats.py, injected)."""
    return nn.BatchNorm(
        axis=CHANNEL_AXIS,
        momentum=1.0 - config.bn_momentum,  # parity: Gluon's momentum weights the old statistic
        epsilon=config.bn_eps,
        in_channels=num_features,
    )


def conv_block(
    in_channels: int,
    out_channels: int,
    config: DenseNetConfig,
    *,
    norm_layer: NormLayer = batch_norm,
) -> nn.HybridSequential:
    """d2l's conv_block: BN, ReLU, 3x3 conv (pad 1 keeps the spatial size for concatenation)."""
    block = nn.HybridSequential()
    block.norm = norm_layer(in_channels, config)
    block.relu = nn.Activation("relu")
    block.conv = nn.Conv2D(
        out_channels, 3, padding=1, in_channels=in_channels, use_bias=config.conv_bias
    )
    return block


class DenseBlock(nn.HybridBlock):
    """Dense connectivity: each layer sees the concatenation of all earlier feature maps."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        config: DenseNetConfig,
        memory_efficient: bool = False,
        *,
        norm_layer: NormLayer = batch_norm,
    ):
        super().__init__()
        if memory_efficient:
            raise NotImplementedError(UNAVAILABLE)  # memory_efficient.py says why
        layer = conv_block if config.bn_size is None else bottleneck_block
        self.layers = nn.HybridSequential()  # used as a list: indexed, never called as a whole
        for j in range(num_layers):
            self.layers.add(
                layer(in_channels + j * growth_rate, growth_rate, config, norm_layer=norm_layer)
            )

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


def transition_block(
    in_channels: int,
    out_channels: int,
    config: DenseNetConfig,
    *,
    norm_layer: NormLayer = batch_norm,
) -> nn.HybridSequential:
    """Between dense blocks: BN, ReLU, 1x1 conv (compression), 2x2/2 average pool (floor)."""
    block = nn.HybridSequential()
    block.norm = norm_layer(in_channels, config)
    block.relu = nn.Activation("relu")
    block.conv = nn.Conv2D(out_channels, 1, in_channels=in_channels, use_bias=config.conv_bias)
    block.pool = nn.AvgPool2D(pool_size=2, strides=2)
    return block


def bottleneck_block(
    in_channels: int,
    growth_rate: int,
    config: DenseNetConfig,
    *,
    norm_layer: NormLayer = batch_norm,
) -> nn.HybridSequential:
    """DenseNet-B layer: a 1x1 conv to bn_size * k channels bounds the 3x3 conv's input width."""
    mid = config.bn_size * growth_rate
    block = nn.HybridSequential()
    block.norm1 = norm_layer(in_channels, config)
    block.relu1 = nn.Activation("relu")
    block.conv1 = nn.Conv2D(mid, 1, in_channels=in_channels, use_bias=config.conv_bias)
    block.norm2 = norm_layer(mid, config)
    block.relu2 = nn.Activation("relu")
    block.conv2 = nn.Conv2D(growth_rate, 3, padding=1, in_channels=mid, use_bias=config.conv_bias)
    return block
