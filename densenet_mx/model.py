"""DenseNet (Huang et al. 2017) in MXNet Gluon, assembled from a DenseNetConfig alone."""

from __future__ import annotations

from mxnet import autograd, nd
from mxnet.gluon import nn

from densenet_spec.config import DenseNetConfig, check_input_shape, spatial_sizes
from densenet_mx.layers import (
    DenseBlock,
    _RunningStatsCorrection,
    _Sequential,
    batch_norm,
    transition_block,
)


class _GlobalAvgPool2D(nn.HybridBlock):
    """(N, C, H, W) -> (N, C) by a plain mean, as the torch model does (no Flatten needed)."""

    def hybrid_forward(self, F, x):
        return F.mean(x, axis=(2, 3))


def _batch_norms(block: nn.Block) -> list[nn.BatchNorm]:
    found = []
    block.apply(lambda b: found.append(b) if isinstance(b, nn.BatchNorm) else None)
    return found


class DenseNet(nn.HybridBlock):
    """Stem, dense blocks with transitions between them, head (BN, ReLU, pool, linear).

    Gluon's usual way sets device and dtype: `model.initialize(ctx=...)`, `model.cast("float64")`;
    every layer has explicit in_channels, so initialize() allocates every tensor at once.
    `model.hybridize()` traces one graph for forward (same numbers as imperative mode).
    Train mode is autograd.record() / autograd.train_mode(). On CPU, MXNet's BatchNorm updates
    its running statistics in backward, not in a train-mode forward; train.train_step and
    train.gradients(training=True) bring that update to the spec's (running_stats_correction).
    """

    def __init__(self, config: DenseNetConfig, memory_efficient: bool = False):
        super().__init__()
        self.config = config
        self._running_stats = {}  # input shape -> running_stats_correction's (mean, var, n)
        c = config
        if c.stem == "imagenet":
            self.stem = _Sequential(
                # parity: explicit symmetric padding (3 and 1), never 'same'
                conv=nn.Conv2D(c.num_init_features, 7, strides=2, padding=3,
                               in_channels=c.in_channels, use_bias=c.conv_bias),
                norm=batch_norm(c.num_init_features, c),
                relu=nn.Activation("relu"),
                pool=nn.MaxPool2D(pool_size=3, strides=2, padding=1),
            )
        else:  # "cifar"
            self.stem = _Sequential(
                conv=nn.Conv2D(c.num_init_features, 3, padding=1,
                               in_channels=c.in_channels, use_bias=c.conv_bias),
            )

        block_in = c.block_in_channels()
        self.blocks = nn.HybridSequential()  # used as lists: indexed, never called as a whole
        self.transitions = nn.HybridSequential()
        for i, num_layers in enumerate(c.block_config):
            self.blocks.add(
                DenseBlock(num_layers, block_in[i], c.growth_rate, c, memory_efficient)
            )
            if i < len(c.block_config) - 1:
                channels = block_in[i] + num_layers * c.growth_rate
                self.transitions.add(
                    transition_block(channels, c.transition_out_channels(channels), c)
                )

        self.head = _Sequential(
            norm=batch_norm(c.num_features, c),  # final batch norm
            relu=nn.Activation("relu"),
            pool=_GlobalAvgPool2D(),
            fc=nn.Dense(c.num_classes, in_units=c.num_features),
        )

    def forward(self, x):
        """Logits. The shape check runs here, outside the hybridized graph (shapes are known)."""
        if isinstance(x, nd.NDArray):
            check_input_shape(self.config, x.shape, "NCHW", training=autograd.is_training())
        return super().forward(x)

    def hybrid_forward(self, F, x):
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        return self.head(x)

    def forward_features(self, x) -> dict:
        """Every stage's output keyed by densenet_spec.params.stage_names, in forward order.

        Runs stage by stage (each stage hybridized on its own when the model is), because a
        hybridized graph returns arrays, not a dict.
        """
        check_input_shape(self.config, x.shape, "NCHW", training=autograd.is_training())
        features = {}
        x = features["stem"] = self.stem(x)
        for i, block in enumerate(self.blocks):
            layer_features = {}
            x = block(x, layer_features)
            features.update({f"blocks.{i}.{k}": y for k, y in layer_features.items()})
            features[f"blocks.{i}"] = x
            if i < len(self.transitions):
                x = features[f"transitions.{i}"] = self.transitions[i](x)
        head = self.head
        x = features["head"] = head.pool(head.relu(head.norm(x)))  # the pooled (N, C)
        features["logits"] = head.fc(x)
        return features

    def running_stats_correction(self, input_shape) -> _RunningStatsCorrection:
        """parity: a context around forward and backward that gives the running statistics the
        spec's update (layers._RunningStatsCorrection)."""
        check_input_shape(self.config, input_shape, "NCHW", training=True)  # before any change
        shape = tuple(int(s) for s in input_shape)
        if shape not in self._running_stats:  # once per shape: it runs every train step
            self._running_stats[shape] = [(norm.running_mean, norm.running_var, n)
                                          for norm, n in self._batch_norm_sizes(*shape)]
        # MXNet's CPU kernel averages in the biased variance; cuDNN (GPU) the unbiased one.
        kernel_unbiased = self.head.norm.running_var.list_ctx()[0].device_type == "gpu"
        return _RunningStatsCorrection(self._running_stats[shape], self.config, kernel_unbiased)

    def _batch_norm_sizes(self, batch, _, height, width) -> list[tuple[nn.BatchNorm, int]]:
        """Every BatchNorm with n, the values per channel it averages over: batch x the spatial
        size of its stage (the stem's BN sits after the 7x7/2 conv, before the max-pool)."""
        sizes = spatial_sizes(self.config, height, width)
        parts = []
        if self.config.stem == "imagenet":
            parts.append((self.stem, ((height - 1) // 2 + 1) * ((width - 1) // 2 + 1)))
        for i, block in enumerate(self.blocks):
            h, w = sizes[f"blocks.{i}"]  # a transition's BN runs before its pool
            parts.append((block, h * w))
            if i < len(self.transitions):
                parts.append((self.transitions[i], h * w))
        parts.append((self.head, h * w))  # the last block's size
        norms = [(norm, batch * hw) for part, hw in parts for norm in _batch_norms(part)]
        assert len(norms) == len(_batch_norms(self)), "a BatchNorm outside stem/blocks/head"
        return norms
