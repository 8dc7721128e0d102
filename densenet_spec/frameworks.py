"""The one framework registry: every part of the project that names a framework reads this table.

Adding a framework is a package (densenet_<name>/ with the five teaching files and adapter.py, see
docs/adding_a_framework.md) plus one entry here. The environment builder, the parity worker and
harness, `dev.py`, the benchmarks and the structure test all iterate over FRAMEWORKS.

EXPORT_TARGETS is the second, smaller table: a model exported from one framework and run by
another runtime (ONNX Runtime), which the parity harness compares like a framework (its own
column in the report) but which has no teaching files: an adapter package only, run in the
environment of the framework it is exported from, for the quantities and dtypes it can do.
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
    # The data-parallel engine of <package>/distributed.py (docs/data_parallel.md); "": none
    data_parallel: str = ""


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
            data_parallel="torch DistributedDataParallel under torchrun",
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
            data_parallel="jax.sharding (shard_map over devices; jax.distributed across processes)",
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
            data_parallel="tf.distribute (MirroredStrategy; MultiWorkerMirroredStrategy)",
        ),
        Framework(
            name="mx",
            title="MXNet (Gluon)",
            package="densenet_mx",
            requirements="mx",
            layout="NCHW",
            tests="tests/mx",
            peer="gluon",
            data_parallel="MXNet kvstore over contexts (dist_sync across processes)",
        ),
    )
}

# The model variants every framework builds (densenet_<name>.variants.make_model): "plain" is the
# teaching model of layers.py and model.py; "fast" injects the framework's performance modules on
# the backend they were tuned for and is otherwise the plain model. Both are proven by the harness.
VARIANTS = ("plain", "fast")


@dataclass(frozen=True)
class ExportTarget:
    """An exported model the parity harness runs like a framework: not a framework package."""

    name: str  # on the command line beside the frameworks: --frameworks torch,onnx
    title: str  # for people
    runs_in: str  # the FRAMEWORKS entry that exports it; its environment runs the worker
    package: str  # <package>.adapter.Adapter: densenet_spec.driver's protocol, for `quantities`
    quantities: tuple[str, ...]  # what it can compute (densenet_spec.case.QUANTITIES)
    dtypes: tuple[str, ...]  # the case dtypes its runtime can run
    devices: tuple[str, ...] = ("cpu",)
    mutations: tuple[str, ...] = ()  # the harness's --mutate kinds it honours
    why: str = ""  # why the quantities and dtypes are limited, for the refusal

    def cannot_run(self, quantities, dtype: str, device: str) -> list[str]:
        """What of a case this target cannot do (empty: it can run it)."""
        out = []
        extra = [q for q in quantities if q not in self.quantities]
        if extra:
            out.append(f"quantities {','.join(extra)} (it computes {','.join(self.quantities)})")
        if dtype not in self.dtypes:
            out.append(f"dtype {dtype} (it runs {', '.join(self.dtypes)})")
        if device not in self.devices:
            out.append(f"device {device} (it runs on {', '.join(self.devices)})")
        return out


EXPORT_TARGETS: dict[str, ExportTarget] = {
    t.name: t
    for t in (
        ExportTarget(
            name="onnx",
            title="ONNX Runtime (torch.onnx export of densenet_torch)",
            runs_in="torch",
            package="densenet_convert.onnx_target",
            quantities=("eval",),
            dtypes=("float32",),
            mutations=("bn_eps",),
            why="an exported graph is an inference model (eval mode, no gradients or optimizer), "
            "and onnxruntime's CPU provider has no float64 Conv or AveragePool kernel",
        ),
        ExportTarget(
            name="onnx-mx",
            title="ONNX Runtime (mx.onnx export of densenet_mx)",
            runs_in="mx",
            package="densenet_convert.onnx_mx_target",
            quantities=("eval",),
            dtypes=("float32",),
            mutations=("bn_eps",),
            why="an exported graph is an inference model (eval mode, no gradients or optimizer), "
            "MXNet's exporter writes float32 graphs, and onnxruntime's CPU provider has no "
            "float64 Conv or AveragePool kernel",
        ),
    )
}


def get_framework(name: str) -> Framework:
    from densenet_spec.errors import UnknownFrameworkError

    try:
        return FRAMEWORKS[name]
    except KeyError:
        raise UnknownFrameworkError(
            f"unknown framework {name!r}; known: {', '.join(FRAMEWORKS)}"
        ) from None


def get_target(name: str) -> Framework | ExportTarget:
    """A framework or an export target: what densenet-parity --frameworks may name."""
    from densenet_spec.errors import UnknownFrameworkError

    if name in FRAMEWORKS:
        return FRAMEWORKS[name]
    if name in EXPORT_TARGETS:
        return EXPORT_TARGETS[name]
    raise UnknownFrameworkError(
        f"unknown framework {name!r}; known: {', '.join(FRAMEWORKS)}; "
        f"export targets: {', '.join(EXPORT_TARGETS)}"
    )


def worker_framework(name: str) -> str:
    """The framework whose environment runs `name`'s parity worker: itself, or runs_in."""
    target = get_target(name)
    return target.runs_in if isinstance(target, ExportTarget) else target.name


def parse_frameworks(text: str) -> list[str]:
    """A comma-separated --frameworks value, checked: known names (frameworks and export
    targets), at least one, no repeats."""
    from densenet_spec.errors import UnknownFrameworkError

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UnknownFrameworkError(
            f"no framework named in {text!r}; known: {', '.join(FRAMEWORKS)}; "
            f"export targets: {', '.join(EXPORT_TARGETS)}"
        )
    for n in names:
        get_target(n)
    return list(dict.fromkeys(names))
