"""DenseNet (Huang et al. 2017) in PyTorch, assembled from a DenseNetConfig alone."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from densenet_spec.config import DenseNetConfig, check_input_shape
from densenet_torch.layers import DenseBlock, batch_norm, transition_block


class _GlobalAvgPool2d(nn.Module):
    """(N, C, H, W) -> (N, C) by a plain mean: deterministic backward on every device
    (AdaptiveAvgPool2d's CUDA backward is not, and use_deterministic_algorithms rejects it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class DenseNet(nn.Module):
    """Stem, dense blocks with transitions between them, head (BN, ReLU, pool, linear).

    Runs in the dtype and memory format the module is moved to: `.to(torch.float64)`,
    `.to(memory_format=torch.channels_last)` give float64 and NHWC-strided kernels.
    """

    def __init__(self, config: DenseNetConfig, memory_efficient: bool = False):
        super().__init__()
        self.config = config
        c = config
        if c.stem == "imagenet":
            self.stem = nn.Sequential(
                OrderedDict(
                    # parity: explicit symmetric padding (3 and 1), never 'same'
                    conv=nn.Conv2d(c.in_channels, c.num_init_features, 7, stride=2, padding=3,
                                   bias=c.conv_bias),
                    norm=batch_norm(c.num_init_features, c),
                    relu=nn.ReLU(inplace=True),
                    pool=nn.MaxPool2d(3, stride=2, padding=1),
                )
            )
        else:  # "cifar"
            self.stem = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(c.in_channels, c.num_init_features, 3, padding=1,
                                   bias=c.conv_bias),
                )
            )

        block_in = c.block_in_channels()
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for i, num_layers in enumerate(c.block_config):
            self.blocks.append(
                DenseBlock(num_layers, block_in[i], c.growth_rate, c, memory_efficient)
            )
            if i < len(c.block_config) - 1:
                channels = block_in[i] + num_layers * c.growth_rate
                self.transitions.append(
                    transition_block(channels, c.transition_out_channels(channels), c)
                )

        self.head = nn.Sequential(
            OrderedDict(
                norm=batch_norm(c.num_features, c),  # final batch norm
                relu=nn.ReLU(inplace=True),
                pool=_GlobalAvgPool2d(),
                fc=nn.Linear(c.num_features, c.num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_shape(self.config, x.shape, "NCHW", training=self.training)
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        return self.head(x)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output keyed by densenet_spec.params.stage_names, in forward order."""
        check_input_shape(self.config, x.shape, "NCHW", training=self.training)
        features = {}
        x = features["stem"] = self.stem(x)
        for i, block in enumerate(self.blocks):
            layer_features = {}
            x = block(x, layer_features)
            features.update({f"blocks.{i}.{k}": y for k, y in layer_features.items()})
            features[f"blocks.{i}"] = x
            if i < len(self.transitions):
                x = features[f"transitions.{i}"] = self.transitions[i](x)
        x = features["head"] = self.head[:-1](x)  # norm, relu, pool: the pooled (N, C)
        features["logits"] = self.head.fc(x)
        return features
