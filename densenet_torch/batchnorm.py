"""The spec's "biased" running-variance rule, which torch's BatchNorm2d cannot follow.

torch's kernel always feeds the unbiased batch variance (times n / (n - 1)) into the running
average: that is the spec's default rule ("unbiased"), and layers.batch_norm is torch's own
BatchNorm2d. A config with bn_running_var == "biased" gets BiasedVarBatchNorm2d instead;
spec_batch_norm, DenseNet's default norm_layer, picks between the two from the config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from densenet_spec.config import DenseNetConfig
from densenet_torch.layers import batch_norm


def spec_batch_norm(num_features: int, config: DenseNetConfig) -> nn.BatchNorm2d:
    """layers.batch_norm, or BiasedVarBatchNorm2d when config.bn_running_var is "biased"."""
    if config.bn_running_var == "unbiased":
        return batch_norm(num_features, config)
    return BiasedVarBatchNorm2d(num_features, eps=config.bn_eps, momentum=config.bn_momentum)


class BiasedVarBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose running variance tracks the biased batch variance (config "biased").

    The batch statistics normalise the input exactly as torch does; only the running-stat update
    is done by hand, with the variance as measured.
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
