"""The one framework registry: every part of the project that names a framework reads this table.

Adding a framework is a package (densenet_<name>/ with the five teaching files and adapter.py, see
docs/adding_a_framework.md) plus one entry here. The environment builder, the parity worker and
harness, `dev.py`, the benchmarks and the structure test all iterate over FRAMEWORKS.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Framework:
    """One framework: where its code, environment, tests and official peer are."""

    name: str  # short name on the command line: --frameworks torch,jax
    title: str  # for people: "PyTorch"
    package: str  # the Python package with layers.py, model.py, weights.py, train.py, adapter.py
    requirements: str  # the environment, built from requirements/<requirements>.txt
    layout: str  # the image layout inside the model ("NCHW" or "NHWC"); canonical is NCHW
    tests: str  # the framework's own test folder, run in its environment
    peer: str  # the official DenseNet benchmarked beside ours (a densenet-bench target)
    env: dict = field(default_factory=dict)  # variables every process of this framework needs
    # Variables for parity runs only: speed settings that leave every number unchanged.
    parity_env: dict = field(default_factory=dict)


# XLA's CPU backend compiles float64 convolutions to plain loops; compiling ~100 of them dominates a
# parity run. LLVM optimisation level 0 cuts that; it is a compile-speed setting only (every JAX
# parity check runs with it, against the oracle). See docs/framework_differences.md for the one
# flag pair that must not be combined with it.
JAX_PARITY_XLA_FLAGS = "--xla_backend_optimization_level=0"

FRAMEWORKS: dict[str, Framework] = {
    f.name: f
    for f in (
        Framework(
            name="torch",
            title="PyTorch",
            package="densenet_torch",
            requirements="torch",
            layout="NCHW",
            tests="tests/torch",
            peer="torchvision",
        ),
        Framework(
            name="jax",
            title="JAX (Flax NNX + Optax)",
            package="densenet_jax",
            requirements="jax",
            layout="NHWC",
            tests="tests/jax",
            peer="keras-jax",
            parity_env={"XLA_FLAGS": JAX_PARITY_XLA_FLAGS},
        ),
        Framework(
            name="tf",
            title="TensorFlow (Keras 3)",
            package="densenet_tf",
            requirements="tf",
            layout="NHWC",
            tests="tests/tf",
            peer="keras-tf",
            env={"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"},
        ),
        Framework(
            name="mx",
            title="MXNet (Gluon)",
            package="densenet_mx",
            requirements="mx",
            layout="NCHW",
            tests="tests/mx",
            peer="gluon",
        ),
    )
}

# The model variants every framework builds (densenet_<name>.variants.make_model): "plain" is the
# teaching model of layers.py and model.py; "fast" injects the framework's performance modules on
# the backend they were tuned for and is otherwise the plain model. Both are proven by the harness.
VARIANTS = ("plain", "fast")


def get_framework(name: str) -> Framework:
    from densenet_spec.errors import UnknownFrameworkError

    try:
        return FRAMEWORKS[name]
    except KeyError:
        raise UnknownFrameworkError(
            f"unknown framework {name!r}; known: {', '.join(FRAMEWORKS)}"
        ) from None


def parse_frameworks(text: str) -> list[str]:
    """A comma-separated --frameworks value, checked: known names, at least one, no repeats."""
    from densenet_spec.errors import UnknownFrameworkError

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UnknownFrameworkError(
            f"no framework named in {text!r}; known: {', '.join(FRAMEWORKS)}"
        )
    for n in names:
        get_framework(n)
    return list(dict.fromkeys(names))
