"""The MXNet Gluon side of a parity case: densenet_spec.driver.run_case runs the loop with it.

`python -m densenet_spec.worker densenet_mx <case folder> <result file>` (in the mx environment:
MXNet 1.9.1 needs numpy < 1.24) builds Adapter(case). Gluon's NCHW / OIHW layout is the canonical
one, so results only need .asnumpy(). MXNet reads its switches from environment variables the
first time an operator needs them, so environment() sets them before any operator runs here.

Case options: "hybridize" (default True: the model runs as traced graphs; False: imperative),
"mutate": "same_padding" (the harness's self-check), "pieces" (float32 gradient cases: every
BatchNorm's output of the gradient pass, densenet_spec.driver). Gluon calls forward hooks only
on blocks that run imperatively (a hybridized graph runs its children inside one cached op), so
a pieces case takes its gradients from an imperative twin of the model whose BatchNorms carry
forward hooks: the recorded outputs come from the very pass that computes the gradients, and
hybridized and imperative MXNet give the same gradients bit for bit
(tests/mx/test_mx_parity.py::test_hybridized_equals_imperative).
Training extension (densenet_spec.training): optimizer_state, load_optimizer_state, set_lr,
predict.
"""

from __future__ import annotations

import os
import platform

import mxnet as mx
import numpy as np
from mxnet import autograd, nd
from mxnet.gluon import nn

from densenet_mx import api, train
from densenet_mx.canonical import block_at
from densenet_mx.model import DenseNet
from densenet_mx.precision import max_pool_eval_grad_is_correct, precision_settings
from densenet_mx.sgd import load_spec_buffers, spec_buffers
from densenet_mx.variants import FAST_HYBRIDIZE, make_model
from densenet_mx.weights import from_canonical, to_canonical
from densenet_spec.case import Case, records_pieces, relu_names
from densenet_spec.config import same_pads
from densenet_spec.driver import Gradients
from densenet_spec.errors import DeviceUnavailableError


def environment(device: str, dtype: str) -> dict:
    """Apply the device and precision settings for a parity run; return what was applied."""
    settings = precision_settings(device, dtype)  # also rejects unknown dtypes and devices
    versions = {"mxnet": mx.__version__, "numpy": np.__version__}
    os.environ.update(settings)  # before the availability check, as before any operator
    precision = {name: os.environ[name] for name in settings}  # read back
    if device == "cpu":
        # Each operator that falls back to the plain CPU kernel would log a warning.
        os.environ.setdefault("MXNET_STORAGE_FALLBACK_LOG_VERBOSE", "0")
        precision["max_pool_eval_grad_correct"] = max_pool_eval_grad_is_correct()
        device_name = platform.processor() or platform.machine()
    else:  # gpu
        if mx.context.num_gpus() == 0:
            cuda = mx.runtime.Features().is_enabled("CUDA")
            build = "a CUDA build" if cuda else "a CPU-only build"
            raise DeviceUnavailableError(
                f"mx: no gpu device (mx.context.num_gpus() is 0; mxnet {mx.__version__} is {build})"
            )
        versions["cudnn"] = mx.runtime.Features().is_enabled("CUDNN")
        device_name = "gpu(0)"
    return {
        "device": device,
        "device_name": device_name,
        "dtype": dtype,
        "precision": precision,
        "versions": versions,
    }


class Adapter:
    """densenet_spec.driver's adapter protocol for one case. The model is built once (graphs are
    traced once); build() reloads the case's weights, so every quantity starts from them."""

    def __init__(self, case: Case):
        self.case = case
        self.info = environment(case.device, case.dtype)
        if (
            "grad" in case.quantities
            and case.config.stem == "imagenet"
            and self.info["precision"].get("max_pool_eval_grad_correct") is False
        ):
            raise RuntimeError(
                "mx: oneDNN is active in this process (an operator ran before "
                "MXNET_MKLDNN_ENABLED=0 was set) and its max-pool gradient after an eval-mode "
                "forward is wrong; run the worker in a fresh process or set "
                "MXNET_MKLDNN_ENABLED=0 before MXNet starts"
            )
        self.ctx = mx.gpu(0) if case.device == "gpu" else mx.cpu()
        self.hybridize = bool(case.options.get("hybridize", True))
        fast = case.variant == "fast"
        self.info |= {
            "memory_efficient": case.memory_efficient,
            "hybridize": self.hybridize,
            "fast_path": {  # what the fast variant changes (variants.py); empty for plain
                "hybridize": FAST_HYBRIDIZE if self.hybridize else "off (case option)",
                "running_stats_scaling": "running_stats.scale_in_one_call (one cached op)",
            }
            if fast
            else {},
        }
        if records_pieces(case):
            self.info["pieces_recording"] = (  # info["pieces"] would mean unavailable
                "BatchNorm outputs recorded by Gluon forward hooks in the imperative pass that "
                "computes the gradients (hybridized == imperative bit for bit)"
            )
        self._model = None
        self._recorder = None  # (imperative twin, {bn name: output}) for pieces cases

    def _make_model(self) -> DenseNet:
        case = self.case
        model = make_model(
            case.config, case.variant, case.memory_efficient, ctx=self.ctx, dtype=case.dtype
        )
        if "mutate" in case.options:
            _apply_mutation(model, case.options["mutate"], *case.x.shape[2:])
        return model

    def build(self) -> DenseNet:
        if self._model is None:
            model = self._make_model()
            flags = FAST_HYBRIDIZE if self.case.variant == "fast" else {}
            model.hybridize(self.hybridize, **flags)  # again after a mutation's new stem
            self._model = model
        from_canonical(self._model, self.case.params)  # running statistics included
        return self._model

    def images(self, x: np.ndarray) -> nd.NDArray:
        return nd.array(x, ctx=self.ctx, dtype=self.case.dtype)

    def labels(self, y: np.ndarray) -> nd.NDArray:
        return nd.array(y, ctx=self.ctx, dtype="int64")

    def stage_outputs(self, model: DenseNet, x: nd.NDArray, training: bool) -> dict:
        with autograd.train_mode() if training else autograd.predict_mode():
            return model.stage_outputs(x)

    def loss(self, logits: nd.NDArray, y: nd.NDArray) -> nd.NDArray:
        return train.loss_fn(logits, y)

    def gradients(self, model: DenseNet, x: nd.NDArray, y: nd.NDArray, training: bool):
        preactivations = None
        if records_pieces(self.case):
            twin, preactivations = self._recording_twin()
            from_canonical(twin, to_canonical(model))  # the model's weights and statistics
            preactivations.clear()
            model = twin
        loss, grad_input, grads = train.gradients(model, x, y, training)
        params = {k: g.asnumpy() for k, g in grads.items()} if training else None
        if preactivations is not None:
            preactivations = dict(preactivations)
        return Gradients(loss=loss, input=grad_input, params=params, preactivations=preactivations)

    def _recording_twin(self) -> tuple[DenseNet, dict]:
        """The imperative twin whose every BatchNorm records its output under its canonical
        name (relu_names: "stem.norm", "blocks.0.layers.1.norm2", ...), built once."""
        if self._recorder is None:
            twin = self._make_model()
            twin.hybridize(False)
            outputs: dict[str, nd.NDArray] = {}
            for name in relu_names(self.case.config):
                block_at(twin, name).register_forward_hook(_recorder(outputs, name))
            self._recorder = twin, outputs
        return self._recorder

    def predict(self, model: DenseNet, x: nd.NDArray) -> nd.NDArray:
        return api.predict(model, x)

    # The training extension (densenet_spec.training)
    def optimizer_state(self, model: DenseNet, optimizer) -> dict[str, np.ndarray]:
        return spec_buffers(model, optimizer)

    def load_optimizer_state(self, model: DenseNet, optimizer, buffers: dict) -> None:
        load_spec_buffers(model, optimizer, buffers)

    def set_lr(self, optimizer, lr: float) -> None:
        optimizer.set_learning_rate(lr)

    def make_optimizer(self, model: DenseNet):
        return train.make_optimizer(model, self.case.sgd)

    def train_step(self, model: DenseNet, optimizer, x: nd.NDArray, y: nd.NDArray):
        return train.train_step(model, optimizer, x, y)

    def to_numpy(self, t: nd.NDArray) -> np.ndarray:
        return t.asnumpy()

    def to_canonical(self, model: DenseNet) -> dict[str, np.ndarray]:
        return to_canonical(model)


def _recorder(outputs: dict, name: str):
    """A forward hook that keeps a block's output under `name` (the array the ReLU reads)."""

    def hook(block, inputs, output):
        outputs[name] = output.detach()

    return hook


class _Pad(nn.HybridBlock):
    """Constant padding of H and W by ((top, bottom), (left, right)); no parameters."""

    def __init__(self, pads, value: float):
        super().__init__()
        (top, bottom), (left, right) = pads
        self.pad_width = (0, 0, 0, 0, top, bottom, left, right)
        self.value = value

    def hybrid_forward(self, F, x):
        return F.pad(x, mode="constant", pad_width=self.pad_width, constant_value=self.value)


def _apply_mutation(model: DenseNet, kind: str, height: int, width: int) -> None:
    """Self-check hook (harness --mutate mx:same_padding): the ImageNet stem's 7x7/2 conv and
    3x3/2 max-pool pad the TF/XLA 'same' way, (2, 3) and (0, 1) on even sizes instead of the
    spec's (3, 3) and (1, 1): the d2l JAX/TF tabs' mistake. Gluon pads symmetrically only, so the
    stem is rebuilt with two parameterless pad blocks, a conv that pads 0 and shares the old
    conv's Parameters (params=), the same BN, and a max-pool that pads 0: same weights and names.
    """
    if kind != "same_padding":
        raise ValueError(
            f"mx: unknown mutation {kind!r}; known: same_padding (bn_eps comes in the config)"
        )
    c = model.config
    if c.stem != "imagenet":
        raise ValueError("mx: same_padding changes the strided ImageNet stem; this config has none")
    old = model.stem
    stem = nn.HybridSequential()
    stem.pad = _Pad((same_pads(height, 7, 2), same_pads(width, 7, 2)), 0.0)
    stem.conv = nn.Conv2D(
        c.num_init_features,
        7,
        strides=2,
        padding=0,
        in_channels=c.in_channels,
        use_bias=c.conv_bias,
        params=old.conv.params,
    )
    stem.norm = old.norm
    stem.relu = old.relu
    # zeros, not -inf, before the max-pool: its input is post-ReLU (>= 0), as in densenet_tf
    stem.pool_pad = _Pad((same_pads(-(-height // 2), 3, 2), same_pads(-(-width // 2), 3, 2)), 0.0)
    stem.pool = type(old.pool)(pool_size=3, strides=2, padding=0)  # NaN propagation kept
    model.stem = stem
