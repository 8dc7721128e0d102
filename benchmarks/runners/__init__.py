"""One small runner per framework (ours) and per official implementation (peers).

Each defines VARIANTS (the baseline first, then the fast paths) and prepare(request) -> Prepared.
Module names match the framework; imports inside are absolute, so `import torch` in torch.py is
PyTorch itself.
"""
