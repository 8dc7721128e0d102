"""The model variants the harness and the benchmarks build: the teaching model or the fast one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from densenet_jax import xla_cpu
from densenet_jax.memory_efficient import MemoryEfficientDenseBlock
from densenet_jax.model import DenseNet
from densenet_spec.config import DenseNetConfig, check_float_dtype
from densenet_spec.errors import UnknownVariantError
from densenet_spec.frameworks import VARIANTS


def make_model(
    config: DenseNetConfig,
    variant: str = "plain",
    memory_efficient: bool = False,
    *,
    dtype=jnp.float32,
    rngs: nnx.Rngs | None = None,
    platform: str | None = None,
) -> DenseNet:
    """A DenseNet for `config` in `dtype` (weights drawn from `rngs`, default nnx.Rngs(0)).

    "plain": DenseNet(config), the model of layers.py and model.py; forward- and reverse-mode
    differentiable. "fast": on XLA's CPU backend, DenseNet with xla_cpu.py's kernels injected
    (1x1 convolutions as matrix products, the stem's max-pool backward, a scale/shift
    BatchNorm), the plain model's numbers (proven by the harness), reverse-mode AD only; on any
    other platform fast is the plain model. `platform` is where the model will run ("cpu",
    "gpu", "tpu"), by default jax.default_backend().
    memory_efficient: MemoryEfficientDenseBlock (dense layers recomputed in backward, reverse-mode
    AD only) in every dense block, in either variant.
    """
    check_float_dtype(dtype, "model")  # before anything is built
    if variant not in VARIANTS:
        raise UnknownVariantError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    parts = {}
    if variant == "fast":
        parts.update(xla_cpu.fast_modules(platform or jax.default_backend()))
    if memory_efficient:
        parts["dense_block"] = MemoryEfficientDenseBlock
    return DenseNet(config, dtype=dtype, rngs=rngs, **parts)
