"""parity: a max-pool that propagates NaN, as the spec's oracle, torch and JAX do.

MXNet 1.9's Pooling kernel keeps a window's running maximum with `value > max`, which is false
for NaN, so a NaN is skipped: an image with a NaN pixel would give finite logits through the
ImageNet stem's max-pool. NaNMaxPool2D (injected into DenseNet by default, model.py's
`max_pool_layer`) adds to Gluon's max-pool one term per window that is -0.0 where the window
holds no NaN and NaN where it holds one:

    y = max_pool(x) + sqrt(-max_pool(x != x))

`x != x` is 1 exactly at NaN entries; its max-pool is 1 for a window with a NaN, else 0 (the
pool's padding never wins); sqrt(-1) is NaN and sqrt(-0.0) is -0.0, and v + (-0.0) == v bit for
bit for every v (signed zeros and infinities included). So every other value, and the gradient
(the term sits behind BlockGrad, whose zero gradient MXNet's graph pass drops), are MXNet's own
max-pool's, bit for bit; tests/mx/test_mx_nan.py checks both, imperative and hybridized.
Cost: one more pool over a 0/1 mask and two elementwise operators, forward only.
"""

from __future__ import annotations

from mxnet.gluon import nn


class NaNMaxPool2D(nn.MaxPool2D):
    """nn.MaxPool2D (same arguments) whose window maximum is NaN when the window holds a NaN."""

    def hybrid_forward(self, F, x):
        y = super().hybrid_forward(F, x)
        has_nan = super().hybrid_forward(F, x != x)  # 1 where the window holds a NaN, else 0
        return y + F.BlockGrad(F.sqrt(-has_nan))  # + NaN there, + (-0.0) (no change) elsewhere
