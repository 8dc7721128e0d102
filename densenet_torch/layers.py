"""DenseNet building blocks in PyTorch (d2l chapter 8.7 names; layout NCHW, channel axis 1).

Each block is an nn.Sequential with named children (norm, relu, conv, ...), so the state_dict keys
read like the canonical parameter names of densenet_spec.params. `norm_layer(num_features, config)`
builds every BatchNorm; the default is batch_norm below.
"""

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from densenet_spec.config import DenseNetConfig

CHANNEL_AXIS = 1
NormLayer = Callable[[int, DenseNetConfig], nn.Module]  # (num_features, config) -> a BatchNorm


def batch_norm(num_features: int, config: DenseNetConfig) -> nn.BatchNorm2d:
    """torch's BatchNorm2d set to the spec (its defaults are the spec's; passed anyway)."""
    return nn.BatchNorm2d(
        num_features,
        eps=config.bn_eps,  # parity: spec's epsilon (Keras' DenseNet uses 1.001e-5)
        momentum=config.bn_momentum,  # parity: torch's convention is the spec's: new-stat weight
    )


def conv_block(
    in_channels: int,
    out_channels: int,
    config: DenseNetConfig,
    *,
    norm_layer: NormLayer = batch_norm,
) -> nn.Sequential:
    """d2l's conv_block: BN, ReLU, 3x3 conv (pad 1 keeps the spatial size for concatenation)."""
    return nn.Sequential(
        OrderedDict(
            norm=norm_layer(in_channels, config),
            relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=config.conv_bias),
        )
    )


class DenseBlock(nn.Module):
    """Dense connectivity: each layer sees the concatenation of all earlier feature maps."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        config: DenseNetConfig,
        *,
        norm_layer: NormLayer = batch_norm,
    ):
        super().__init__()
        layer = conv_block if config.bn_size is None else bottleneck_block
        self.layers = nn.ModuleList(
            [
                layer(in_channels + j * growth_rate, growth_rate, config, norm_layer=norm_layer)
                for j in range(num_layers)
            ]
        )

    def forward(self, x: torch.Tensor, features: dict | None = None) -> torch.Tensor:
        """features, if given, collects each layer's output y as "layers.<j>"."""
        for j, layer in enumerate(self.layers):
            y = layer(x)
            if features is not None:
                features[f"layers.{j}"] = y
            x = torch.cat([x, y], dim=CHANNEL_AXIS)
        return x


def transition_block(
    in_channels: int,
    out_channels: int,
    config: DenseNetConfig,
    *,
    norm_layer: NormLayer = batch_norm,
) -> nn.Sequential:
    """Between dense blocks: BN, ReLU, 1x1 conv (compression), 2x2/2 average pool (floor)."""
    return nn.Sequential(
        OrderedDict(
            norm=norm_layer(in_channels, config),
            relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(in_channels, out_channels, 1, bias=config.conv_bias),
            pool=nn.AvgPool2d(2, stride=2),
        )
    )


def bottleneck_block(
    in_channels: int,
    growth_rate: int,
    config: DenseNetConfig,
    *,
    norm_layer: NormLayer = batch_norm,
) -> nn.Sequential:
    """DenseNet-B layer: a 1x1 conv to bn_size * k channels bounds the 3x3 conv's input width."""
    mid = config.bn_size * growth_rate
    return nn.Sequential(
        OrderedDict(
            norm1=norm_layer(in_channels, config),
            relu1=nn.ReLU(inplace=True),
            conv1=nn.Conv2d(in_channels, mid, 1, bias=config.conv_bias),
            norm2=norm_layer(mid, config),
            relu2=nn.ReLU(inplace=True),
            conv2=nn.Conv2d(mid, growth_rate, 3, padding=1, bias=config.conv_bias),
        )
    )
