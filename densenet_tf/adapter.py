"""The TensorFlow/Keras adapter of the one worker driver (densenet_spec.driver).

`python -m densenet_spec.worker densenet_tf <case folder> <result file>` runs Adapter(case) in the
tf environment. The model is NHWC with HWIO kernels; images are transposed from NCHW once here,
and results go back to the canonical layout (stage outputs NCHW, weights via weights.to_canonical).

Case options: jit_compile (bool; XLA for the train steps, default: the variant's setting, see
variants.make_model), mutate ("same_padding", the harness's self-check).

The precision settings live in precision.py, imported first: it sets TF_ENABLE_ONEDNN_OPTS
before TensorFlow's first import.
"""

from __future__ import annotations

# isort: off
from densenet_tf import precision  # first: sets TF_ENABLE_ONEDNN_OPTS before TensorFlow starts

# isort: on
import keras
import numpy as np
import tensorflow as tf

from densenet_spec.case import Case, relu_names
from densenet_spec.config import same_pads
from densenet_spec.driver import Gradients
from densenet_spec.errors import DeviceUnavailableError
from densenet_spec.params import check_momentum_buffers
from densenet_tf import train
from densenet_tf.canonical import (
    from_canonical_array,
    layer_at,
    named_variables,
    to_canonical_array,
)
from densenet_tf.model import DenseNet
from densenet_tf.variants import make_model
from densenet_tf.weights import from_canonical, to_canonical


def environment(device: str, dtype: str, *, op_determinism: bool = True) -> dict:
    """Apply the device and precision settings for a parity run; return what was applied.

    op_determinism=False is for XLA runs only: TF's XLA bridge has no deterministic MaxPoolGrad
    and refuses to compile it while op determinism is on (XLA on CPU is deterministic anyway).
    Once on, op determinism stays on for the process.
    """
    # also rejects unknown dtypes and devices
    settings = precision.precision_settings(device, dtype, op_determinism=op_determinism)
    versions = {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}
    if device == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            build = "a CUDA build" if tf.test.is_built_with_cuda() else "a CPU-only build"
            raise DeviceUnavailableError(
                f"tf: no gpu device (tf.config.list_physical_devices('GPU') is empty; "
                f"tensorflow {tf.__version__} is {build})"
            )
        device_name = "/GPU:0"
        build = tf.sysconfig.get_build_info()
        versions |= {"cuda": build.get("cuda_version"), "cudnn": build.get("cudnn_version")}
    else:
        device_name = "/CPU:0"
    for name, value in settings.items():
        precision.SETTINGS[name][0](value)
    applied = {name: precision.SETTINGS[name][1]() for name in settings}  # read back
    applied["onednn_set_before_import"] = not precision.TF_IMPORTED_FIRST
    return {
        "device": device,
        "device_name": device_name,
        "dtype": dtype,
        "precision": applied,
        "num_threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
        "versions": versions,
    }


class Adapter:
    """densenet_spec.driver's adapter for one case: native tensors are NHWC tf.Tensors."""

    def __init__(self, case: Case):
        self.case = case
        # The fast variant runs XLA where a GPU is present (variants.make_model); XLA needs op
        # determinism off, which must be decided before the first model is built.
        fast_xla = case.variant == "fast" and case.device == "gpu"
        self.jit_compile = bool(case.options.get("jit_compile", fast_xla))
        self.info = environment(case.device, case.dtype, op_determinism=not self.jit_compile)
        self.info |= {
            "memory_efficient": case.memory_efficient,
            "jit_compile": self.jit_compile,
            "kernels": "XLA (jit_compile)" if self.jit_compile else "tf.function",
        }

    def build(self) -> DenseNet:
        case = self.case
        with tf.device(self.info["device_name"]):
            model = make_model(case.config, case.variant, case.memory_efficient, dtype=case.dtype)
        model.jit_compile = self.jit_compile
        if "mutate" in case.options:
            _apply_mutation(model, case.options["mutate"], *case.x.shape[2:])
        from_canonical(model, case.params)
        return model

    def images(self, x: np.ndarray) -> tf.Tensor:
        with tf.device(self.info["device_name"]):
            return tf.constant(np.ascontiguousarray(np.moveaxis(x, -3, -1)))  # NCHW -> NHWC

    def labels(self, y: np.ndarray) -> tf.Tensor:
        with tf.device(self.info["device_name"]):
            return tf.constant(y)

    def stage_outputs(self, model: DenseNet, x: tf.Tensor, training: bool) -> dict:
        with tf.device(self.info["device_name"]):
            return model.stage_outputs(x, training=training)

    def loss(self, logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return train.loss_fn(logits, y)

    def gradients(self, model: DenseNet, x: tf.Tensor, y: tf.Tensor, training: bool) -> Gradients:
        preactivations = _record_batch_norm_outputs(model)
        with tf.device(self.info["device_name"]):
            loss, grad_input, grads = train.gradients(model, x, y, training=training)
        return Gradients(
            loss=loss,
            input=grad_input,
            params=grads if training else None,
            preactivations=preactivations,
        )

    def make_optimizer(self, model: DenseNet) -> keras.optimizers.Optimizer:
        return train.make_optimizer(model, self.case.sgd)

    def train_step(self, model: DenseNet, optimizer, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.device(self.info["device_name"]):
            return train.train_step(model, optimizer, x, y)

    def predict(self, model: DenseNet, x: tf.Tensor) -> tf.Tensor:
        with tf.device(self.info["device_name"]):
            return train.eval_step(model, x)

    # The training extension (densenet_spec.training): the spec's momentum buffers (sgd.py)
    def optimizer_state(self, model: DenseNet, optimizer) -> dict[str, np.ndarray]:
        return {
            name: to_canonical_array(optimizer.buffer(variable).numpy())
            for name, variable in named_variables(model).items()
            if variable.trainable
        }

    def load_optimizer_state(self, model: DenseNet, optimizer, buffers: dict) -> None:
        check_momentum_buffers(buffers, model.config)
        trainable = {n: v for n, v in named_variables(model).items() if v.trainable}
        for name, value in buffers.items():
            slot = optimizer.buffer(trainable[name])
            slot.assign(from_canonical_array(np.asarray(value, slot.dtype)))

    def set_lr(self, optimizer, lr: float) -> None:
        optimizer.learning_rate = lr

    def to_numpy(self, t) -> np.ndarray:
        v = np.asarray(t)
        return np.ascontiguousarray(v.transpose(0, 3, 1, 2)) if v.ndim == 4 else v

    def to_canonical(self, model: DenseNet) -> dict[str, np.ndarray]:
        return to_canonical(model)


def _record_batch_norm_outputs(model: DenseNet) -> dict:
    """A dict that every BatchNorm of `model` fills with its output when it runs, under its
    canonical name (densenet_spec.case.relu_names): the ReLU inputs of the gradients' forward
    pass, which a float32 "pieces" case reports (densenet_spec.driver). The wrapper is on this
    model instance only; build() gives every quantity a fresh model."""
    outputs: dict = {}
    for name in relu_names(model.config):
        norm = layer_at(model, name)
        norm.call = _recording(norm.call, outputs, name)
    return outputs


def _recording(call, outputs: dict, name: str):
    def recorded(inputs, training=None, mask=None):
        outputs[name] = call(inputs, training=training, mask=mask)
        return outputs[name]

    return recorded


def _apply_mutation(model: DenseNet, kind: str, height: int, width: int) -> None:
    """Self-check hook (harness --mutate tf:same_padding): the ImageNet stem's 7x7/2 conv and
    3x3/2 max-pool pad the TF/XLA 'same' way, (2, 3) and (0, 1) on even sizes instead of the
    spec's (3, 3) and (1, 1): the d2l JAX/TF tabs' mistake. Only the two ZeroPadding2D layers
    change (zeros before the max-pool are fine: its input is post-ReLU); weights unchanged."""
    if kind != "same_padding":
        raise ValueError(
            f"tf: unknown mutation {kind!r}; known: same_padding (bn_eps comes in the config)"
        )
    if model.config.stem != "imagenet":
        raise ValueError("tf: same_padding changes the strided ImageNet stem; this config has none")
    model.stem.get_layer("pad").padding = (same_pads(height, 7, 2), same_pads(width, 7, 2))
    model.stem.get_layer("pool_pad").padding = (
        same_pads(-(-height // 2), 3, 2),
        same_pads(-(-width // 2), 3, 2),
    )
