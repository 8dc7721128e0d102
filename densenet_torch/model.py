"""DenseNet (Huang et al. 2017) in PyTorch, assembled from a DenseNetConfig alone."""

from collections import OrderedDict

import torch
from torch import nn

from densenet_spec.config import DenseNetConfig
from densenet_torch.batchnorm import spec_batch_norm
from densenet_torch.inputs import check_input
from densenet_torch.layers import DenseBlock, NormLayer, transition_block


class DenseNet(nn.Module):
    """Stem, dense blocks with transitions between them, head (BN, ReLU, pool, linear).

    norm_layer(num_features, config) builds every BatchNorm: by default torch's BatchNorm2d
    (layers.batch_norm), or the spec's biased running variance if the config asks for it
    (batchnorm.py). dense_block builds each dense block (memory_efficient.py has another).
    Runs in the dtype and memory format the module is moved to.
    """

    def __init__(
        self,
        config: DenseNetConfig,
        *,
        norm_layer: NormLayer = spec_batch_norm,
        dense_block: type[DenseBlock] = DenseBlock,
    ):
        super().__init__()
        self.config = c = config
        init = c.num_init_features
        if c.stem == "imagenet":
            self.stem = nn.Sequential(
                OrderedDict(
                    # parity: explicit symmetric padding (3 and 1), never 'same'
                    conv=nn.Conv2d(c.in_channels, init, 7, stride=2, padding=3, bias=c.conv_bias),
                    norm=norm_layer(init, c),
                    relu=nn.ReLU(inplace=True),
                    pool=nn.MaxPool2d(3, stride=2, padding=1),
                )
            )
        else:  # "cifar"
            self.stem = nn.Sequential(
                OrderedDict(conv=nn.Conv2d(c.in_channels, init, 3, padding=1, bias=c.conv_bias))
            )

        block_in = c.block_in_channels()
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for i, num_layers in enumerate(c.block_config):
            self.blocks.append(
                dense_block(num_layers, block_in[i], c.growth_rate, c, norm_layer=norm_layer)
            )
            if i < len(c.block_config) - 1:
                channels = block_in[i] + num_layers * c.growth_rate
                out = c.transition_out_channels(channels)
                self.transitions.append(transition_block(channels, out, c, norm_layer=norm_layer))

        self.head = nn.Sequential(
            OrderedDict(
                norm=norm_layer(c.num_features, c),  # final batch norm
                relu=nn.ReLU(inplace=True),
                pool=_GlobalAvgPool2d(),
                fc=nn.Linear(c.num_features, c.num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)  # named errors for a wrong type, dtype or shape
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        return self.head(x)

    def stage_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output keyed by densenet_spec.params.stage_names, in forward order."""
        check_input(self, x)
        stages = {}
        x = stages["stem"] = self.stem(x)
        for i, block in enumerate(self.blocks):
            layer_outputs = {}
            x = block(x, layer_outputs)
            stages.update({f"blocks.{i}.{k}": y for k, y in layer_outputs.items()})
            stages[f"blocks.{i}"] = x
            if i < len(self.transitions):
                x = stages[f"transitions.{i}"] = self.transitions[i](x)
        x = stages["head"] = self.head[:-1](x)  # norm, relu, pool: the pooled (N, C)
        stages["logits"] = self.head.fc(x)
        return stages


class _GlobalAvgPool2d(nn.Module):
    """Mean over H and W: deterministic, unlike AdaptiveAvgPool2d's CUDA backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))
