"""Synchronised BatchNorm on torch.distributed collectives, for any device (CPU and gloo too).

torch's nn.SyncBatchNorm refuses CPU tensors ("SyncBatchNorm expected input tensor to be on
GPU"), so the spec's "synchronised" semantics (reference.py, docs/data_parallel.md) is built here
from two all-reduces in forward and one in backward; on GPU torch's own would do as well.

Forward, per channel over all replicas' N*H*W values M:
    mean = all_reduce(sum x) / M;  var = all_reduce(sum (x - mean)^2) / M   (two passes: the
    one-pass E[x^2] - mean^2 cancels catastrophically in float32)
Backward, replica r's dy is the gradient of its own loss; the gradient of the sum of all
replicas' losses with respect to its x is (sums over all replicas, by all_reduce)
    dx = gamma / sqrt(var + eps) * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M)
and d gamma, d beta are replica r's local sums: the data-parallel engine's gradient all-reduce
adds them up (and divides by R, as it does for every parameter).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from densenet_spec.config import DenseNetConfig


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, total, group):
        dims = (0, 2, 3)
        mean = x.sum(dims)
        dist.all_reduce(mean, group=group)
        mean = mean / total
        xc = x - mean[None, :, None, None]
        var = (xc * xc).sum(dims)
        dist.all_reduce(var, group=group)
        var = var / total
        inv_std = torch.rsqrt(var + eps)
        xhat = xc * inv_std[None, :, None, None]
        ctx.save_for_backward(xhat, weight, inv_std)
        ctx.total, ctx.group = total, group
        ctx.mark_non_differentiable(mean, var)
        return xhat * weight[None, :, None, None] + bias[None, :, None, None], mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        xhat, weight, inv_std = ctx.saved_tensors
        dims = (0, 2, 3)
        dbias = dy.sum(dims)
        dweight = (dy * xhat).sum(dims)
        sums = torch.stack([dbias, dweight])  # one all-reduce for both sums
        dist.all_reduce(sums, group=ctx.group)
        mean_dy, mean_dy_xhat = sums[0] / ctx.total, sums[1] / ctx.total
        dx = (dy - mean_dy[None, :, None, None] - xhat * mean_dy_xhat[None, :, None, None]) * (
            weight * inv_std
        )[None, :, None, None]
        return dx, dweight, dbias, None, None, None


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose train-mode statistics are the whole data-parallel batch's.

    Parameters and buffers are BatchNorm2d's (same names, so weights.py loads it); eval mode is
    BatchNorm2d's. Running variance: unbiased (M / (M - 1)) or biased, as the config says, from
    the global count M. `group`: the process group to reduce over (None: the default group).
    """

    def __init__(self, num_features: int, config: DenseNetConfig, group=None):
        super().__init__(num_features, eps=config.bn_eps, momentum=config.bn_momentum)
        self.unbiased = config.bn_running_var == "unbiased"
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.int64)
        dist.all_reduce(count, group=self.group)  # M: replicas' shards may differ in size
        total = int(count.item())
        y, mean, var = _SyncBatchNormFunction.apply(
            x, self.weight, self.bias, self.eps, total, self.group
        )
        with torch.no_grad():
            stat_var = var * (total / (total - 1)) if self.unbiased else var
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(stat_var.detach(), alpha=m)
            self.num_batches_tracked.add_(1)
        return y


def sync_batch_norm(group=None):
    """A DenseNet norm_layer (model.py's argument) building SyncBatchNorm2d over `group`."""

    def norm_layer(num_features: int, config: DenseNetConfig) -> SyncBatchNorm2d:
        return SyncBatchNorm2d(num_features, config, group)

    return norm_layer
