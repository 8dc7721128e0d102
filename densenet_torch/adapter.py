"""The PyTorch side of a parity case: what densenet_spec.driver.run_case asks of a framework.

    <env python> -m densenet_spec.worker densenet_torch <case folder> <result file>

torch's native layout (NCHW) and parameter layout are the canonical ones, so results only need
.numpy(); channels_last (the fast variant, or the case option) changes strides, not the logical
NCHW shape.

Training extension (densenet_spec.training): optimizer_state, load_optimizer_state, set_lr,
predict (sgd.py: torch.optim.SGD already keeps the spec's buffer, the rate outside it).
"""

from __future__ import annotations

import platform
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from densenet_spec.case import Case, records_pieces
from densenet_spec.config import same_pads
from densenet_spec.driver import Gradients
from densenet_spec.errors import DeviceUnavailableError
from densenet_torch import api, sgd, train
from densenet_torch.model import DenseNet
from densenet_torch.precision import DTYPES, SETTINGS, TF32_SETTINGS, precision_settings
from densenet_torch.variants import FAST_PATHS, make_model
from densenet_torch.weights import from_canonical, to_canonical


def environment(device: str, dtype: str, *, threads: int | None = None, tf32: str = "off") -> dict:
    """Apply the device and precision settings for a parity run; return what was applied.

    threads: CPU intra-op threads (torch's default is one per core, which oversubscribes a
    machine shared with other jobs). tf32: "off" (parity) or "default" (torch's TF32 defaults
    left as they are; on a GPU the "precision" record reads them back all the same). On CPU
    TF32 does nothing: the record is the CPU settings and "tf32" says what was asked.
    """
    settings = precision_settings(device, dtype, tf32)  # also rejects unknown values
    recorded = [*settings, *(n for n in TF32_SETTINGS if device == "gpu" and n not in settings)]
    versions = {"torch": torch.__version__, "numpy": np.__version__}
    if device == "gpu":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise DeviceUnavailableError(
                f"torch: no gpu device (torch.cuda.is_available() is False; torch "
                f"{torch.__version__} is {build})"
            )
        versions |= {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
        device_name = torch.cuda.get_device_name()
    else:
        device_name = platform.processor() or platform.machine()
    if threads is not None:
        torch.set_num_threads(threads)
    for name, value in settings.items():
        SETTINGS[name][0](value)
    return {
        "device": device,
        "device_name": device_name,
        "dtype": dtype,
        "precision": {name: SETTINGS[name][1]() for name in recorded},  # read back
        "tf32": tf32,
        "num_threads": torch.get_num_threads(),
        "versions": versions,
    }


class Adapter:
    """densenet_spec.driver's adapter protocol for one case.

    case.options: "channels_last" (NHWC strides for the plain variant too, same numbers),
    "threads" (CPU intra-op threads), "mutate" ("same_padding": the harness's self-check).
    """

    def __init__(self, case: Case):
        self.case = case
        threads = case.options.get("threads")
        self.info = environment(
            case.device,
            case.dtype,
            threads=None if threads is None else int(threads),
            tf32=case.options.get("tf32", "off"),
        )
        self.device = torch.device("cuda" if case.device == "gpu" else "cpu")
        self.dtype = DTYPES[case.dtype]
        fast = case.variant == "fast"
        channels_last = fast or bool(case.options.get("channels_last", False))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.info |= {
            "memory_efficient": case.memory_efficient,
            "channels_last": channels_last,
            "compiled": False,
            "fast_paths": list(FAST_PATHS) if fast else [],
        }

    def build(self) -> DenseNet:
        """The case's weights in a new model: no running statistics leak between quantities."""
        case = self.case
        model = make_model(
            case.config, case.variant, case.memory_efficient, device=self.device, dtype=self.dtype
        )
        model.to(memory_format=self.memory_format)
        from_canonical(model, case.params)
        if "mutate" in case.options:
            _mutate(model, case.options["mutate"], *case.x.shape[2:])
        return model

    def images(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        return t.contiguous(memory_format=self.memory_format)

    def labels(self, y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(y, dtype=np.int64)).to(self.device)

    def stage_outputs(self, model: DenseNet, x: torch.Tensor, training: bool) -> dict:
        model.train(training)
        with torch.no_grad():
            return model.stage_outputs(x)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return train.loss_fn(logits, y)

    def gradients(self, model: DenseNet, x, y, training: bool) -> Gradients:
        """train.gradients; with the case's "pieces" option also every BatchNorm's output of the
        same forward pass (the ReLU's input: the linear piece the gradients were taken on)."""
        preactivations = {} if records_pieces(self.case) else None
        hooks = [] if preactivations is None else _record_outputs(model, preactivations)
        try:
            loss, grad_input, grads = train.gradients(model, x, y, training)
        finally:
            for hook in hooks:
                hook.remove()
        params = {k: self.to_numpy(g) for k, g in grads.items()} if training else None
        return Gradients(loss, grad_input, params, preactivations=preactivations)

    def make_optimizer(self, model: DenseNet) -> torch.optim.SGD:
        return train.make_optimizer(model, self.case.sgd)

    def train_step(self, model: DenseNet, optimizer, x, y) -> torch.Tensor:
        return train.train_step(model, optimizer, x, y)

    def predict(self, model: DenseNet, x: torch.Tensor) -> torch.Tensor:
        return api.predict(model, x)

    # The training extension (densenet_spec.training)
    def optimizer_state(self, model: DenseNet, optimizer) -> dict[str, np.ndarray]:
        return sgd.spec_buffers(model, optimizer)

    def load_optimizer_state(self, model: DenseNet, optimizer, buffers: dict) -> None:
        sgd.load_spec_buffers(model, optimizer, buffers)

    def set_lr(self, optimizer, lr: float) -> None:
        sgd.set_lr(optimizer, lr)

    def to_numpy(self, t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().contiguous().numpy()

    def to_canonical(self, model: DenseNet) -> dict[str, np.ndarray]:
        return to_canonical(model)


def _record_outputs(model: nn.Module, outputs: dict) -> list:
    """Forward hooks that copy every BatchNorm's output into outputs[name] (a copy: the ReLU after
    it works in place; the first call only: a memory-efficient block's recomputation repeats it)."""

    def hook(name):
        def record(module, args, out):
            if name not in outputs:
                outputs[name] = out.detach().clone()

        return record

    return [
        m.register_forward_hook(hook(name))
        for name, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d)
    ]


def _mutate(model: DenseNet, kind: str, height: int, width: int) -> None:
    """Self-check hook (harness --mutate torch:same_padding): the ImageNet stem's 7x7/2 conv and
    3x3/2 max-pool pad the TF/XLA 'same' way, (2, 3) and (0, 1) on even sizes instead of the
    spec's (3, 3) and (1, 1): the d2l JAX/TF tabs' mistake. Weights and names are unchanged."""
    if kind != "same_padding":
        raise ValueError(
            f"torch: unknown mutation {kind!r}; known: same_padding (bn_eps comes in the config)"
        )
    if model.config.stem != "imagenet":
        raise ValueError(
            "torch: same_padding changes the strided ImageNet stem; this config has none"
        )
    conv_h, conv_w = same_pads(height, 7, 2), same_pads(width, 7, 2)
    pool_h, pool_w = same_pads(-(-height // 2), 3, 2), same_pads(-(-width // 2), 3, 2)
    stem = model.stem
    stem.conv.padding = (0, 0)
    stem.pool.padding = 0
    model.stem = nn.Sequential(
        OrderedDict(
            pad=nn.ZeroPad2d((*conv_w, *conv_h)),  # (left, right, top, bottom)
            conv=stem.conv,
            norm=stem.norm,
            relu=stem.relu,
            pool_pad=nn.ConstantPad2d((*pool_w, *pool_h), float("-inf")),
            pool=stem.pool,
        )
    )
