"""DenseNet (Huang et al. 2017) in MXNet Gluon, assembled from a DenseNetConfig alone."""

from collections.abc import Callable

from mxnet import nd
from mxnet.gluon import nn

from densenet_mx.inputs import check_input
from densenet_mx.layers import DenseBlock, NormLayer, batch_norm, transition_block
from densenet_mx.max_pool import NaNMaxPool2D
from densenet_mx.running_stats import RunningStatsCorrection
from densenet_spec.config import DenseNetConfig


class DenseNet(nn.HybridBlock):
    """Stem, dense blocks with transitions between them, head (BN, ReLU, pool, linear).

    Gluon's usual way sets device and dtype: `model.initialize(ctx=...)`, `model.cast("float64")`.
    `model.hybridize()` traces one graph (same numbers as imperative mode). Train mode is
    autograd.record() / autograd.train_mode(). `running_stats(model)` makes the context that
    train.py runs every train step in; None keeps MXNet's own running-statistic rule.
    `norm_layer(num_features, config)` builds every BatchNorm (default layers.batch_norm).
    `max_pool_layer`: the stem's max-pool (default max_pool.NaNMaxPool2D: NaN propagates).
    """

    def __init__(
        self,
        config: DenseNetConfig,
        memory_efficient: bool = False,
        *,
        norm_layer: NormLayer = batch_norm,
        running_stats: Callable | None = RunningStatsCorrection,
        max_pool_layer: Callable = NaNMaxPool2D,
    ):
        super().__init__()
        self.config = c = config
        self.stem = nn.HybridSequential()
        if c.stem == "imagenet":
            # parity: explicit symmetric padding (3 and 1), never 'same'
            self.stem.conv = nn.Conv2D(
                c.num_init_features,
                7,
                strides=2,
                padding=3,
                in_channels=c.in_channels,
                use_bias=c.conv_bias,
            )
            self.stem.norm = norm_layer(c.num_init_features, c)
            self.stem.relu = nn.Activation("relu")
            # parity: MXNet's max-pool skips NaN; the spec's propagates it (max_pool.py)
            self.stem.pool = max_pool_layer(pool_size=3, strides=2, padding=1)
        else:  # "cifar"
            self.stem.conv = nn.Conv2D(
                c.num_init_features, 3, padding=1, in_channels=c.in_channels, use_bias=c.conv_bias
            )

        block_in = c.block_in_channels()
        self.blocks = nn.HybridSequential()  # used as lists: indexed, never called as a whole
        self.transitions = nn.HybridSequential()
        k = c.growth_rate  # the paper's k: channels each dense layer adds
        for i, num_layers in enumerate(c.block_config):
            self.blocks.add(
                DenseBlock(num_layers, block_in[i], k, c, memory_efficient, norm_layer=norm_layer)
            )
            if i < len(c.block_config) - 1:
                channels = block_in[i] + num_layers * k
                out = c.transition_out_channels(channels)
                self.transitions.add(transition_block(channels, out, c, norm_layer=norm_layer))

        self.head = nn.HybridSequential()
        self.head.norm = norm_layer(c.num_features, c)  # final batch norm
        self.head.relu = nn.Activation("relu")
        self.head.pool = nn.GlobalAvgPool2D()
        self.head.flatten = nn.Flatten()  # (N, C, 1, 1) -> (N, C)
        self.head.fc = nn.Dense(c.num_classes, in_units=c.num_features)

        # parity: MXNet's BatchNorm kernel has its own running-statistic rule (running_stats.py)
        self.running_stats = running_stats(self) if running_stats else None

    def forward(self, x):
        """Logits. The input check runs here, outside the hybridized graph (shapes are known)."""
        check_input(self, x)  # named errors for a wrong type, dtype or shape
        return super().forward(x)

    def hybrid_forward(self, F, x):
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        return self.head(x)

    def stage_outputs(self, x: nd.NDArray) -> dict[str, nd.NDArray]:
        """Every stage's output keyed by densenet_spec.params.stage_names, in forward order.

        Runs stage by stage (each stage hybridized on its own when the model is), because a
        hybridized graph returns arrays, not a dict.
        """
        check_input(self, x)
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
        x = features["head"] = head.flatten(head.pool(head.relu(head.norm(x))))
        features["logits"] = head.fc(x)
        return features
