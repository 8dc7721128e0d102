"""Shared setup for the TensorFlow tests: settings that must precede the first TF import, and
the oracle's results cached per case (the oracle is the slow half of every parity test).

TF_ENABLE_ONEDNN_OPTS=0 as densenet_tf.precision sets it for parity runs (see its docstring);
TensorFlow reads it once, at import. TF_CPU_ALLOCATOR_USE_BFC gives the CPU allocator the
statistics tf.config.experimental.get_memory_info reads (the memory-efficient test). OpenBLAS
(the oracle's matmuls) gets one thread: its spinning worker threads otherwise compete with
TensorFlow's pool on a small shared machine.
"""

# The shared pytest helpers (tests/support/densenet_testing.py), outside the library. Not tests/
# itself on the path: its folders jax/, torch/, tf/, mx/ would shadow those packages by name.
import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1] / "support"))

import os

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import functools  # noqa: E402

import pytest  # noqa: E402


@functools.cache
def _cached_case(
    preset: str, image_size: int, dtype: str, steps: int, memory_efficient: bool, variant: str
):
    from densenet_spec.case import make_case
    from densenet_spec.config import get_preset

    return make_case(
        get_preset(preset),
        batch=2,
        image_size=image_size,
        dtype=dtype,
        steps=steps,
        memory_efficient=memory_efficient,
        variant=variant,
    )


@functools.cache
def _cached_oracle(preset: str, image_size: int, dtype: str, steps: int):
    from densenet_spec import reference

    results, _ = reference.run_case(_cached_case(preset, image_size, dtype, steps, False, "plain"))
    return results


@pytest.fixture(scope="session")
def parity_case():
    """parity_case(preset, image_size, dtype, steps, memory_efficient=False, variant="plain")
    -> Case (cached)."""

    def get(preset, image_size, dtype="float64", steps=1, memory_efficient=False, variant="plain"):
        return _cached_case(preset, image_size, dtype, steps, memory_efficient, variant)

    return get


@pytest.fixture(scope="session")
def oracle():
    """oracle(preset, image_size, dtype, steps) -> the NumPy oracle's results (cached)."""

    def get(preset, image_size, dtype="float64", steps=1):
        return _cached_oracle(preset, image_size, dtype, steps)

    return get
