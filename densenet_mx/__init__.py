"""DenseNet in MXNet Gluon (1.9): the fourth framework package of densenet-parity.

layers.py (blocks), model.py (DenseNet), weights.py (canonical weights), train.py (loss, SGD,
steps), worker.py (parity cases). Gluon's NCHW / OIHW layout is the canonical one.
MXNet 1.9.1 imports only with numpy < 1.24: it runs in its own environment (.venvs/mx).
"""

from densenet_mx.model import DenseNet

__all__ = ["DenseNet"]
