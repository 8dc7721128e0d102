"""DenseNet in JAX: Flax NNX modules, Optax SGD, channels last (NHWC) inside the model."""

from densenet_jax.model import DenseNet
from densenet_jax.variants import make_model
from densenet_jax.weights import from_canonical, load_weights, save_weights, to_canonical

__all__ = [
    "DenseNet",
    "from_canonical",
    "load_weights",
    "make_model",
    "save_weights",
    "to_canonical",
]
