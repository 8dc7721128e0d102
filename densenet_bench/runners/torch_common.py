"""PyTorch pieces that ours (torch.py) and torchvision's (torchvision.py) runners share."""

from __future__ import annotations

from collections.abc import Callable

import torch

from densenet_bench.timing import Prepared, Request, Unsupported, synthetic_batch

# eager is torch's standard way; channels_last (NHWC strides) and torch.compile are the fast paths
VARIANTS = ("eager", "channels_last", "compile")  # torch.py and torchvision.py repeat it


def device(req: Request) -> torch.device:
    if req.threads:
        torch.set_num_threads(req.threads)
    if req.device == "gpu":
        if not torch.cuda.is_available():
            raise Unsupported("torch sees no CUDA device")
        return torch.device("cuda")
    if req.device != "cpu":
        raise Unsupported(f"torch runner has no device {req.device!r}")
    return torch.device("cpu")


def prepare(
    req: Request,
    model: torch.nn.Module,
    dev: torch.device,
    infer_step: Callable,
    train_step: Callable,
    make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
) -> Prepared:
    """Apply the variant, put model and batch on the device, close over one step."""
    x, y = synthetic_batch(req, "NCHW")
    x, y = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    model = model.to(dev)
    if req.variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if req.variant == "compile":
        model = torch.compile(model)  # compiles on the first call, timed as first_call_s
    if req.mode == "infer":
        step = lambda: infer_step(model, x)  # noqa: E731
    else:
        optimizer = make_optimizer(model)
        step = lambda: train_step(model, optimizer, x, y)  # noqa: E731
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    return Prepared(
        step=step,
        sync=(lambda out: torch.cuda.synchronize()) if cuda else (lambda out: None),
        info={
            "versions": {"torch": torch.__version__},
            "threads": {
                "intra_op": torch.get_num_threads(),
                "inter_op": torch.get_num_interop_threads(),
            },
            "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        },
        device_peak_bytes=(lambda: torch.cuda.max_memory_allocated()) if cuda else (lambda: None),
    )
