"""Our DenseNet in PyTorch, stepped by densenet_torch.train."""

from __future__ import annotations

from benchmarks.runners import _torch_common as common
from benchmarks.timing import Prepared, Request
from densenet_spec.case import SGDConfig
from densenet_torch import train
from densenet_torch.model import DenseNet

VARIANTS = common.VARIANTS


def prepare(req: Request) -> Prepared:
    dev = common.device(req)
    model = DenseNet(req.densenet_config(), memory_efficient=req.memory_efficient)
    return common.prepare(
        req,
        model,
        dev,
        infer_step=train.eval_step,
        train_step=train.train_step,
        make_optimizer=lambda m: train.make_optimizer(m, SGDConfig()),
    )
