"""memory_efficient=True (keep only each layer's output, recompute the rest in backward) has no
Gluon equivalent in MXNet 1.9: there is no checkpoint for imperative or hybridized Gluon blocks,
and the mirroring switch MXNET_BACKWARD_DO_MIRROR acts only in the symbolic executor
(Module / simple_bind), not on a hybridized Gluon model. layers.DenseBlock raises
NotImplementedError(UNAVAILABLE) rather than silently storing everything.
"""

UNAVAILABLE = (
    "mx: memory_efficient=True needs recomputation in backward (torch.utils.checkpoint); "
    "MXNet 1.9 Gluon has none, and MXNET_BACKWARD_DO_MIRROR applies only to symbolic Module "
    "executors, not to Gluon blocks"
)
