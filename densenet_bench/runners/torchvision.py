"""torchvision.models.densenet121 (and 161/169/201), random weights, the standard torch loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision

from densenet_bench.runners import torch_common as common
from densenet_bench.timing import Prepared, Request, official_preset
from densenet_spec.case import SGDConfig

VARIANTS = ("eager", "channels_last", "compile")  # applied by torch_common.prepare


def _infer_step(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def _train_step(model, optimizer, x, y):
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _make_optimizer(model):
    sgd = SGDConfig()
    return torch.optim.SGD(
        model.parameters(), lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay
    )


def prepare(req: Request) -> Prepared:
    dev = common.device(req)
    model = torchvision.models.get_model(
        official_preset(req), weights=None, memory_efficient=req.memory_efficient
    )
    prepared = common.prepare(req, model, dev, _infer_step, _train_step, _make_optimizer)
    prepared.info["versions"]["torchvision"] = torchvision.__version__
    return prepared
