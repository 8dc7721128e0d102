"""DenseNet in PyTorch: the reference framework package of densenet-parity.

The teaching files: layers.py (blocks), model.py (DenseNet), weights.py (canonical weights),
train.py (loss, SGD, steps). Beside them, injected: batchnorm.py (the spec's biased
running-variance rule), memory_efficient.py (checkpointed dense block), variants.py (make_model:
plain or fast), precision.py and adapter.py (parity cases). torch's NCHW / OIHW layout is the
canonical one.
"""

from densenet_torch.model import DenseNet
from densenet_torch.variants import make_model

__all__ = ["DenseNet", "make_model"]
