"""parity: MXNet's SGD with float64 weights updated in double precision.

Gluon's optimizer "sgd" runs mom = momentum * mom - lr * (g + wd * w); w += mom. Its fused
kernels (sgd_mom_update, multi_sgd_mom_update) take lr, momentum and wd as C floats: 0.05 becomes
0.050000001, so every float64 update would be off by 1e-8 relative, which the float64 step
tolerance (1e-9) sees after two steps. SpecSGD updates float64 weights in NDArray arithmetic with
Python scalars (double, exact to the weights' dtype); float32 weights keep MXNet's own fused,
aggregated path (multi_sgd_mom_update, MXNET_OPTIMIZER_AGGREGATION_SIZE tensors a call), where
float32 arithmetic would round the scalars anyway.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np


class SpecSGD(mx.optimizer.SGD):
    """mx.optimizer.SGD; float64 weights update in double (see the module docstring)."""

    def update_multi_precision(self, index, weight, grad, state):
        if not isinstance(index, (list, tuple)):
            index, weight, grad, state = [index], [weight], [grad], [state]
        if weight[0].dtype != np.float64:  # the Updater passes one dtype at a time
            return super().update_multi_precision(index, weight, grad, state)
        self._update_count(index)
        lrs, wds = self._get_lrs(index), self._get_wds(index)
        for w, g, mom, lr, wd in zip(weight, grad, state, lrs, wds):
            step = lr * (self.rescale_grad * g + wd * w)
            if mom is None:  # momentum 0: SGD keeps no state
                w[:] -= step
            else:
                mom[:] = self.momentum * mom - step
                w[:] += mom
