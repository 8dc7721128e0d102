"""Shared setup for the JAX tests: settings that must precede JAX's first computation, and the
expensive results (JAX runs, oracle runs) cached per case.

float64 and float32 run in one process: x64 is enabled once, here; float32 arrays stay float32
because every array is created with an explicit dtype.

XLA's CPU backend compiles float64 convolutions to plain loops, and compiling a hundred of them
dominates these tests: the compile-speed flags of parity runs (densenet_spec.frameworks.
JAX_PARITY_XLA_FLAGS, applied by the harness to every jax worker). They change code speed, not
semantics: the float64 bounds are 1e5 above rounding, and the float32 bounds come from the
oracle's own rounding.
OpenBLAS (the oracle's matmuls) gets one thread: the cores are shared with XLA's.
"""

# The shared pytest helpers (tests/support/densenet_testing.py), outside the library. Not tests/
# itself on the path: its folders jax/, torch/, tf/, mx/ would shadow those packages by name.
import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1] / "support"))

import functools
import importlib.util
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
if importlib.util.find_spec("jax") is not None:
    from densenet_spec.frameworks import JAX_PARITY_XLA_FLAGS

    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {JAX_PARITY_XLA_FLAGS}".strip()

    import jax

    jax.config.update("jax_enable_x64", True)


import pytest  # noqa: E402


def _cases():
    """name -> (config, batch, image size, optimizer steps, quantities)."""
    from densenet_spec.case import QUANTITIES
    from densenet_spec.config import get_preset

    tiny = get_preset("tiny")
    return {
        "tiny": (tiny, 2, 32, 2, QUANTITIES),
        "tiny_biased_var": (tiny.replace(bn_running_var="biased"), 2, 16, 2, QUANTITIES),
        "d2l": (get_preset("d2l"), 2, 64, 2, QUANTITIES),
        "densenet_bc_100": (get_preset("densenet_bc_100"), 2, 8, 2, QUANTITIES),
        # Eval quantities only (see test_densenet121_32px_eval_mode_matches_oracle).
        "densenet121": (get_preset("densenet121"), 2, 32, 1, ("eval",)),
    }


@functools.cache
def _parity_case(
    name: str, dtype: str = "float64", memory_efficient: bool = False, variant: str = "plain"
):
    from densenet_spec.case import make_case

    config, batch, size, steps, quantities = _cases()[name]
    return make_case(
        config,
        batch=batch,
        image_size=size,
        steps=steps,
        dtype=dtype,
        quantities=quantities,
        memory_efficient=memory_efficient,
        variant=variant,
    )


def run_jax_case(case):
    """densenet_jax's (results, info) for a case, through the one worker driver."""
    from densenet_jax.adapter import Adapter
    from densenet_spec.driver import run_case

    return run_case(case, Adapter(case))


@functools.cache
def _jax_results(
    name: str, dtype: str = "float64", memory_efficient: bool = False, variant: str = "plain"
) -> dict:
    return run_jax_case(_parity_case(name, dtype, memory_efficient, variant))[0]


@functools.cache
def _oracle_results(name: str, dtype: str = "float64") -> dict:
    from densenet_spec import reference

    return reference.run_case(_parity_case(name, dtype))[0]


@functools.cache
def _oracle64_of_float32(name: str) -> dict:
    """The float32 case's own numbers run in float64: the exact reference for a float32 run."""
    import dataclasses

    import numpy as np

    from densenet_spec import reference

    case = _parity_case(name, "float32")
    up = functools.partial(np.asarray, dtype=np.float64)
    case64 = dataclasses.replace(
        case,
        dtype="float64",
        params={k: up(v) for k, v in case.params.items()},
        x=up(case.x),
        step_x=up(case.step_x),
    )
    return reference.run_case(case64)[0]


@pytest.fixture(scope="session")
def parity_case():
    """parity_case(name, dtype="float64", memory_efficient=False, variant="plain") -> Case."""
    return _parity_case


@pytest.fixture(scope="session")
def jax_results():
    """jax_results(name, dtype="float64", memory_efficient=False, variant="plain") -> results
    of densenet_jax through the driver (cached)."""
    return _jax_results


@pytest.fixture(scope="session")
def jax_run_case():
    """run_case(case) -> (results, info): densenet_jax through the one worker driver."""
    return run_jax_case


@pytest.fixture(scope="session")
def oracle_results():
    """oracle_results(name, dtype="float64") -> the NumPy oracle's results on the same case."""
    return _oracle_results


@pytest.fixture(scope="session")
def oracle64_of_float32():
    return _oracle64_of_float32
