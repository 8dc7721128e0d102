"""Our DenseNet in PyTorch (plain or fast model), stepped by densenet_torch.train."""

from __future__ import annotations

from densenet_bench.runners import torch_common as common
from densenet_bench.timing import Prepared, Request
from densenet_spec.case import SGDConfig
from densenet_torch import train
from densenet_torch.variants import make_model

VARIANTS = ("eager", "channels_last", "compile")  # applied by torch_common.prepare


def prepare(req: Request) -> Prepared:
    dev = common.device(req)
    # the fast model is in the channels_last memory format already (--fast channels_last also
    # converts the input batch)
    model = make_model(req.densenet_config(), req.model, req.memory_efficient)
    return common.prepare(
        req,
        model,
        dev,
        infer_step=train.eval_step,
        train_step=train.train_step,
        make_optimizer=lambda m: train.make_optimizer(m, SGDConfig()),
    )
