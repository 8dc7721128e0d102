"""The JAX side of a parity case: what densenet_spec.driver.run_case asks of a framework.

    <env python> -m densenet_spec.worker densenet_jax <case folder> <result file>

NCHW NumPy in, NHWC inside the model (converted once, at the edge), canonical NCHW / OIHW out.
"""

from __future__ import annotations

from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from densenet_jax import api, sgd, train, xla_cpu
from densenet_jax.inputs import check_batch
from densenet_jax.model import DenseNet
from densenet_jax.precision import precision_settings
from densenet_jax.variants import make_model
from densenet_jax.weights import from_canonical, to_canonical
from densenet_spec.case import Case, records_pieces, relu_names
from densenet_spec.config import same_pads
from densenet_spec.driver import Gradients
from densenet_spec.errors import DeviceUnavailableError


def environment(device: str, dtype: str, *, tf32: str = "off") -> dict:
    """Apply the device and precision settings the case asks for; return what was applied.

    tf32: "off" (parity) or "default" (JAX's default matmul precision left as it is; on a GPU
    the "precision" record reads it back all the same). On CPU TF32 does nothing: "tf32" in
    the record says what was asked."""
    settings = precision_settings(device, dtype, tf32)  # also rejects unknown values
    recorded = [*settings]
    if device == "gpu" and "jax_default_matmul_precision" not in settings:
        recorded.append("jax_default_matmul_precision")
    try:
        devices = jax.devices(device)
    except RuntimeError:  # "Unknown backend gpu" / "Backend 'gpu' failed to initialize"
        devices = []
    if not devices:
        available = sorted({d.platform for d in jax.devices()})
        raise DeviceUnavailableError(f"jax: no {device} device (available: {', '.join(available)})")
    for name, value in settings.items():  # x64: before any float64 array is created
        jax.config.update(name, value)
    jax.config.update("jax_default_device", devices[0])
    return {
        "device": str(devices[0]),
        "dtype": dtype,
        "x64": bool(jax.config.jax_enable_x64),
        "precision": {name: getattr(jax.config, name) for name in recorded},  # read back
        "tf32": tf32,
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
    }


class Adapter:
    """densenet_spec.driver's adapter protocol for one case.

    case.options: "mutate" ("same_padding": the harness's self-check). info["fast_paths"] names
    the xla_cpu.py kernels the fast variant uses on this device (none off CPU).
    """

    def __init__(self, case: Case):
        self.case = case
        self.info = environment(case.device, case.dtype, tf32=case.options.get("tf32", "off"))
        # Every BatchNorm's output for float32 piece parity (densenet_spec.driver); the
        # memory-efficient layers hand theirs out of their custom_vjp (memory_efficient.py)
        self.pieces = records_pieces(case)
        fast = xla_cpu.fast_modules(case.device) if case.variant == "fast" else {}
        self.info |= {
            "memory_efficient": case.memory_efficient,
            "fast_paths": [f"{f.__module__}.{f.__qualname__}" for f in fast.values()],
        }
        self.loaded: DenseNet | None = None

    def build(self) -> DenseNet:
        """A copy of the case's model: no running statistics leak between quantities."""
        if self.loaded is None:
            case = self.case
            # nnx.eval_shape builds the model without drawing initial weights (compiling the
            # random initialisers shape by shape is slow on CPU); from_canonical then sets every
            # tensor and checks that none is left out.
            self.loaded = nnx.eval_shape(
                lambda: make_model(
                    case.config,
                    case.variant,
                    case.memory_efficient,
                    dtype=jnp.dtype(case.dtype),
                    platform=case.device,
                )
            )
            from_canonical(self.loaded, case.params)
            if "mutate" in case.options:  # before any tracing; case.x is NCHW: (H, W) = shape[2:]
                _mutate(self.loaded, case.options["mutate"], *case.x.shape[2:])
        return nnx.clone(self.loaded, arrays=True)  # its own buffers: train_step donates them

    def images(self, x: np.ndarray) -> jax.Array:
        return jnp.asarray(x.transpose(0, 2, 3, 1))  # parity: NCHW -> NHWC once, at the edge

    def labels(self, y: np.ndarray) -> jax.Array:
        return jnp.asarray(y)

    def stage_outputs(self, model: DenseNet, x: jax.Array, training: bool) -> dict:
        _set_mode(model, training)
        return _stage_outputs(model, x)

    def loss(self, logits: jax.Array, y: jax.Array) -> jax.Array:
        return train.loss_fn(logits, y)

    def gradients(self, model: DenseNet, x: jax.Array, y: jax.Array, training: bool) -> Gradients:
        """Loss and gradients; the stage outputs of the same forward pass (one compilation), and
        with the case's "pieces" option every BatchNorm's output of that pass."""
        check_batch(model, x, y, training)  # named errors before any state changes
        _set_mode(model, training)
        if self.pieces:  # every BatchNorm sows its output (batchnorm.py)
            model.set_attributes(record_output=True, raise_if_not_found=False)
        loss, grad_input, grads, stages, outputs = _gradients_and_stages(model, x, y, self.pieces)
        params = to_canonical(model, grads) if training else None
        preactivations = None
        if self.pieces:
            preactivations = {}
            for name in relu_names(self.case.config):
                path = tuple(int(p) if p.isdigit() else p for p in name.split("."))
                (preactivations[name],) = outputs[(*path, "output")]  # one call per pass
        return Gradients(loss, grad_input, params, stages, preactivations)

    def make_optimizer(self, model: DenseNet) -> nnx.Optimizer:
        return train.make_optimizer(model, self.case.sgd)

    def train_step(self, model: DenseNet, optimizer: nnx.Optimizer, x, y) -> jax.Array:
        return train.train_step(model, optimizer, x, y)

    def predict(self, model: DenseNet, x: jax.Array) -> jax.Array:
        return api.predict(model, x)

    def optimizer_state(self, model: DenseNet, optimizer: nnx.Optimizer) -> dict[str, np.ndarray]:
        return sgd.spec_buffers(model, optimizer)

    def load_optimizer_state(
        self, model: DenseNet, optimizer: nnx.Optimizer, buffers: dict
    ) -> None:
        sgd.load_spec_buffers(model, optimizer, buffers)

    def set_lr(self, optimizer: nnx.Optimizer, lr: float) -> None:
        sgd.set_lr(optimizer, lr)

    def to_numpy(self, t: jax.Array) -> np.ndarray:
        a = np.asarray(t)
        return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a  # NHWC -> NCHW

    def to_canonical(self, model: DenseNet) -> dict[str, np.ndarray]:
        return to_canonical(model)


def _set_mode(model: DenseNet, training: bool) -> None:
    if training:
        model.train()
    else:
        model.eval()


@nnx.jit
def _stage_outputs(model, x):
    return model.stage_outputs(x)


@nnx.jit(static_argnames="pieces")
def _gradients_and_stages(model, x, y, pieces: bool):
    """One forward and backward pass: loss, d loss / d x, d loss / d params, stage outputs, and
    with `pieces` every BatchNorm's output ({path: (value,)}, nnx.capture of their sow)."""

    def loss_of(model, x):
        if pieces:
            stages, outputs = nnx.capture(DenseNet.stage_outputs, nnx.Intermediate)(model, x)
            outputs = {path: v.get_value() for path, v in nnx.to_flat_state(outputs)}
        else:
            stages, outputs = model.stage_outputs(x), {}
        return train.loss_fn(stages["logits"], y), (stages, outputs)

    grad_fn = nnx.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)  # model's Params, x
    (loss, (stages, outputs)), (grads, grad_input) = grad_fn(model, x)
    return loss, grad_input, grads, stages, outputs


def _mutate(model: DenseNet, kind: str, height: int, width: int) -> None:
    """Self-check hook (harness --mutate jax:same_padding): the ImageNet stem's 7x7/2 conv and
    3x3/2 max-pool pad the TF/XLA 'same' way, (2, 3) and (0, 1) on even sizes instead of the
    spec's (3, 3) and (1, 1): the d2l JAX tab's mistake. Weights and names are unchanged."""
    if kind != "same_padding":
        raise ValueError(
            f"jax: unknown mutation {kind!r}; known: same_padding (bn_eps comes in the config)"
        )
    if model.config.stem != "imagenet":
        raise ValueError(
            "jax: same_padding changes the strided ImageNet stem; this config has none"
        )
    model.stem.conv.padding = (same_pads(height, 7, 2), same_pads(width, 7, 2))  # read per call
    pool_pads = (same_pads(-(-height // 2), 3, 2), same_pads(-(-width // 2), 3, 2))
    model.stem.max_pool = _max_pool_padded(pool_pads)


def _max_pool_padded(pads) -> Callable:
    """nnx.max_pool padded by `pads` (with -inf, its init value) whatever padding it is given."""

    def max_pool(x, window_shape, strides, padding):
        return nnx.max_pool(x, window_shape, strides, pads)

    return max_pool
