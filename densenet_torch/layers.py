"""DenseNet building blocks in PyTorch (d2l chapter 8.7 names; layout NCHW, channel axis 1).

Each block is an nn.Sequential with named children (norm, relu, conv, ...), so the state_dict keys
read like the canonical parameter names of densenet_spec.params.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from densenet_spec.config import DenseNetConfig

CHANNEL_AXIS = 1


class _BiasedVarBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose running variance tracks the biased batch variance (config "biased").

    torch's kernel always feeds the unbiased variance (times n / (n - 1)) into the running
    average. Here the batch statistics still normalise the input exactly as torch does; only the
    running-stat update is done by hand, with the variance as measured.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats):
            return super().forward(x)
        y = F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        with torch.no_grad():
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)  # parity: biased
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean, alpha=m)
            self.running_var.mul_(1 - m).add_(var, alpha=m)
            self.num_batches_tracked.add_(1)
        return y


def batch_norm(num_features: int, config: DenseNetConfig) -> nn.BatchNorm2d:
    """BatchNorm2d set to the spec.

    torch's defaults (eps 1e-5, momentum 0.1 as the weight of the new batch statistic, running
    variance from the unbiased batch variance) are the spec's defaults; they are passed anyway.
    """
    # parity: torch's kernel updates the running variance with the unbiased batch variance
    cls = nn.BatchNorm2d if config.bn_running_var == "unbiased" else _BiasedVarBatchNorm2d
    return cls(
        num_features,
        eps=config.bn_eps,  # parity: spec's epsilon (Keras' DenseNet uses 1.001e-5)
        momentum=config.bn_momentum,  # parity: torch's convention is the spec's: new-stat weight
    )


def conv_block(in_channels: int, out_channels: int, config: DenseNetConfig) -> nn.Sequential:
    """d2l's conv_block: BN, ReLU, 3x3 conv (pad 1 keeps the spatial size for concatenation)."""
    return nn.Sequential(
        OrderedDict(
            norm=batch_norm(in_channels, config),
            relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=config.conv_bias),
        )
    )


@contextlib.contextmanager
def _scratch_running_stats(module: nn.Module):
    """Let every BatchNorm in `module` update throwaway copies of its running statistics.

    torch.utils.checkpoint re-runs the forward during backward, and a BatchNorm in train mode
    would update its running statistics a second time (pytorch issue 96136; torchvision's
    memory-efficient DenseNet has it). The re-run normalises with the same batch statistics and
    saves the same tensors for backward; only its running-stat update lands in copies.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    real = [(m.running_mean, m.running_var, m.num_batches_tracked) for m in norms]
    for m, stats in zip(norms, real):
        m.running_mean, m.running_var, m.num_batches_tracked = (t.clone() for t in stats)
    try:
        yield
    finally:
        for m, stats in zip(norms, real):
            m.running_mean, m.running_var, m.num_batches_tracked = stats


def _save_convolution_outputs(ctx, op, *args, **kwargs):
    if op is torch.ops.aten.convolution.default:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def _keep_convolutions(layer: nn.Module):
    """checkpoint's (forward, recomputation) contexts: keep convolution outputs, recompute the
    rest, and let the recomputation's BatchNorms update scratch running statistics."""
    forward, recompute = create_selective_checkpoint_contexts(_save_convolution_outputs)

    @contextlib.contextmanager
    def recomputation():
        # scratch stats first: inside the selective context their copies would count as ops
        # of the checkpointed region that the forward never ran
        with _scratch_running_stats(layer), recompute:
            yield

    return forward, recomputation()


class DenseBlock(nn.Module):
    """Dense connectivity: each layer sees the concatenation of all earlier feature maps.

    memory_efficient keeps the separate feature maps and each layer's convolution outputs, not
    its concatenation or BN-ReLU outputs (the concatenation grows quadratically with depth):
    backward reruns the concatenation, BNs and ReLUs (torch.utils.checkpoint with a selective
    policy) but no convolution. torchvision reruns the concatenation, first BN-ReLU and the 1x1
    conv, and keeps the second BN-ReLU's output. The recomputation updates scratch copies of
    the running statistics, so the real ones are updated exactly once per step, as without
    checkpointing, and every number is the same.
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
        layer = conv_block if config.bn_size is None else bottleneck_block
        self.layers = nn.ModuleList(
            [layer(in_channels + j * growth_rate, growth_rate, config) for j in range(num_layers)]
        )
        self.memory_efficient = memory_efficient

    def _run_layer(self, layer: nn.Sequential, inputs: list[torch.Tensor]) -> torch.Tensor:
        if not (self.memory_efficient and torch.is_grad_enabled()):
            return layer(torch.cat(inputs, dim=CHANNEL_AXIS))
        # Backward reruns the concatenation, BNs and ReLUs; the convolutions' outputs are kept
        # (selective checkpointing), so no convolution runs twice.
        return checkpoint(
            lambda *inputs: layer(torch.cat(inputs, dim=CHANNEL_AXIS)),
            *inputs,
            use_reentrant=False,
            context_fn=lambda: _keep_convolutions(layer),
        )

    def forward(self, x: torch.Tensor, features: dict | None = None) -> torch.Tensor:
        inputs = [x]  # the block input, then each layer's output y
        for j, layer in enumerate(self.layers):
            y = self._run_layer(layer, inputs)
            if features is not None:
                features[f"layers.{j}"] = y
            inputs.append(y)
        return torch.cat(inputs, dim=CHANNEL_AXIS)


def transition_block(in_channels: int, out_channels: int, config: DenseNetConfig) -> nn.Sequential:
    """Between dense blocks: BN, ReLU, 1x1 conv (compression), 2x2/2 average pool (floor)."""
    return nn.Sequential(
        OrderedDict(
            norm=batch_norm(in_channels, config),
            relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(in_channels, out_channels, 1, bias=config.conv_bias),
            pool=nn.AvgPool2d(2, stride=2),
        )
    )


def bottleneck_block(in_channels: int, growth_rate: int, config: DenseNetConfig) -> nn.Sequential:
    """DenseNet-B layer: a 1x1 conv to bn_size * k channels bounds the 3x3 conv's input width."""
    mid = config.bn_size * growth_rate
    return nn.Sequential(
        OrderedDict(
            norm1=batch_norm(in_channels, config),
            relu1=nn.ReLU(inplace=True),
            conv1=nn.Conv2d(in_channels, mid, 1, bias=config.conv_bias),
            norm2=batch_norm(mid, config),
            relu2=nn.ReLU(inplace=True),
            conv2=nn.Conv2d(mid, growth_rate, 3, padding=1, bias=config.conv_bias),
        )
    )
