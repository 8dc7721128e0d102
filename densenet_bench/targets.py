"""What can be measured: our DenseNet in every framework of the registry, and its official peer.

Ours are read from `densenet_spec.frameworks.FRAMEWORKS` (package, environment, peer); a framework
is benchmarked by the runner module named after it, `densenet_bench/runners/<name>.py`. The peers
are described here, the one place that knows how to run another project's DenseNet; which framework
a peer belongs to comes from the registry's `peer` field too.

Standard library and the registry only: this module is read by the CLI (spec environment) and by
the runner inside every framework's environment.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from densenet_spec.errors import DenseNetError
from densenet_spec.frameworks import FRAMEWORKS, VARIANTS

RUNNERS = Path(__file__).resolve().parent / "runners"
# The official ImageNet DenseNet-BC presets (torchvision's and the Gluon zoo's set).
OFFICIAL = ("densenet121", "densenet161", "densenet169", "densenet201")


@dataclass(frozen=True)
class Target:
    """Something to time: our DenseNet in one framework, or that framework's official one."""

    name: str  # on the command line and in every result line
    framework: str  # registry name of the framework it runs on
    implementation: str  # "ours", or where the official DenseNet comes from
    env: str  # the environment it runs in (requirements/<env>.txt)
    runner: str  # module in densenet_bench.runners
    presets: tuple[str, ...] | None = None  # None: any config
    memory_efficient: bool = True  # has a checkpointed (memory-efficient) mode
    keras_backend: str | None = None  # KERAS_BACKEND for the runner process
    runs: tuple[str, ...] | None = None  # the runner's variants this target runs (None: all)

    @property
    def ours(self) -> bool:
        return self.implementation == "ours"

    @property
    def models(self) -> tuple[str | None, ...]:
        """Our model variants (plain, fast); a peer has one model of its own (None)."""
        return VARIANTS if self.ours else (None,)

    @property
    def variants(self) -> tuple[str, ...]:
        """How the runner can execute the model: its framework's standard way first, then the
        execution fast paths (--fast)."""
        return self.runs or runner_variants(self.runner)


@dataclass(frozen=True)
class Peer:
    """An official DenseNet: where it comes from and what it lacks."""

    implementation: str
    runner: str
    env: str | None = None  # None: its framework's own environment
    presets: tuple[str, ...] = OFFICIAL
    memory_efficient: bool = False  # has a checkpointed mode
    keras_backend: str | None = None
    runs: tuple[str, ...] | None = None  # the runner's variants it runs (None: all)


# Keyed by the registry's `peer` names. No weights are ever downloaded.
PEERS = {
    "torchvision": Peer(
        "torchvision", "torchvision", env="bench-torchvision", memory_efficient=True
    ),
    "keras-jax": Peer(
        "keras.applications",
        "keras",
        env="bench-keras-jax",
        presets=("densenet121", "densenet169", "densenet201"),  # Keras ships no DenseNet-161
        keras_backend="jax",
        runs=("jit",),  # Keras always compiles with jax.jit on JAX
    ),
    "keras-tf": Peer(
        "keras.applications",
        "keras",
        presets=("densenet121", "densenet169", "densenet201"),
        keras_backend="tensorflow",
        runs=("function", "xla"),
    ),
    "gluon": Peer("gluon model zoo", "gluon"),
}


def _all_targets() -> dict[str, Target]:
    """Ours then its peer, per framework, in registry order (the order of every run)."""
    out = {}
    for fw in FRAMEWORKS.values():
        out[fw.name] = Target(fw.name, fw.name, "ours", fw.requirements, runner=fw.name)
        peer = PEERS.get(fw.peer)
        if peer is not None:
            out[fw.peer] = Target(
                fw.peer,
                fw.name,
                peer.implementation,
                peer.env or fw.requirements,
                peer.runner,
                peer.presets,
                peer.memory_efficient,
                keras_backend=peer.keras_backend,
                runs=peer.runs,
            )
    return out


TARGETS: dict[str, Target] = _all_targets()


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise DenseNetError(f"unknown target {name!r}; known: {', '.join(TARGETS)}") from None


def peer_of(name: str) -> str | None:
    """The official peer of one of our targets, if the registry names one we can run."""
    peer = FRAMEWORKS[name].peer if name in FRAMEWORKS else None
    return peer if peer in TARGETS else None


@cache
def runner_variants(runner: str) -> tuple[str, ...]:
    """A runner module's VARIANTS, read from its source without importing it (the CLI's
    environment has none of the frameworks)."""
    path = RUNNERS / f"{runner}.py"
    if not path.exists():
        raise DenseNetError(
            f"no benchmark runner densenet_bench/runners/{path.name}: a framework is benchmarked"
            " by the runner named after it (see densenet_bench/runners/__init__.py)"
        )
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
            "VARIANTS"
        ]:
            return tuple(ast.literal_eval(node.value))
    raise DenseNetError(f"{path} defines no literal VARIANTS tuple")


def fast_paths() -> list[str]:
    """Every execution fast path some target has (what --fast accepts)."""
    return sorted({v for t in TARGETS.values() for v in t.variants[1:]})
