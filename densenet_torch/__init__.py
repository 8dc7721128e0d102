"""DenseNet in PyTorch: the reference framework package of densenet-parity.

layers.py (blocks), model.py (DenseNet), weights.py (canonical weights), train.py (loss, SGD,
steps), worker.py (parity cases). torch's NCHW / OIHW layout is the canonical one.
"""

from densenet_torch.model import DenseNet

__all__ = ["DenseNet"]
