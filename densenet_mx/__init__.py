"""DenseNet in MXNet Gluon (1.9): the fourth framework package of densenet-parity.

The teaching files: layers.py (blocks), model.py (DenseNet), weights.py (canonical weights),
train.py (loss, SGD, steps). variants.py builds the "plain" and "fast" models; adapter.py runs
parity cases. Beside them, machinery a reader may skip: running_stats.py (the spec's
running-statistic rule from MXNet's BatchNorm kernel), sgd.py (float64 SGD in double),
precision.py (parity settings), canonical.py (canonical parameter names).
Gluon's NCHW / OIHW layout is the canonical one.
MXNet 1.9.1 imports only with numpy < 1.24: it runs in its own environment (.venvs/mx).
"""

from densenet_mx.model import DenseNet
from densenet_mx.variants import make_model

__all__ = ["DenseNet", "make_model"]
