"""From command-line options to the list of measurements, and the order of rounds.

A measurement is one (target, model variant, execution variant, preset, batch, image size, mode,
memory-efficient) combination, made in its own process. Each peer runs right after ours, so a
slow phase of a shared machine falls on both sides of a comparison alike.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass

from densenet_bench.targets import TARGETS, Target, fast_paths, peer_of
from densenet_bench.timing import MODES, Request
from densenet_spec.config import PRESETS, DenseNetConfig
from densenet_spec.errors import DenseNetError, UnknownPresetError
from densenet_spec.frameworks import FRAMEWORKS, VARIANTS

# The paper's deepest ImageNet DenseNet-BC (Table 1), for memory against depth; a benchmark
# config only (no official implementation ships it, so it is no spec preset).
BENCH_PRESETS = {
    **PRESETS,
    "densenet264": DenseNetConfig(
        growth_rate=32,
        block_config=(6, 12, 64, 48),
        num_init_features=64,
        stem="imagenet",
        bn_size=4,
        compression=0.5,
        conv_bias=False,
        in_channels=3,
        num_classes=1000,
    ),
}


@dataclass(frozen=True)
class Run:
    """One measurement: what to time, in which environment."""

    target: Target
    env: str
    request: Request


def csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(s) for s in csv(text)]
    except ValueError:
        raise DenseNetError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise DenseNetError(f"{flag} values must be >= 1, got {text!r}")
    return values


def default_size(config: DenseNetConfig) -> int:
    return 32 if config.stem == "cifar" else 224


def plan(args: argparse.Namespace) -> tuple[list[Run], list[str]]:
    """Every measurement to make, in order, and a note for every combination skipped.

    `args` is densenet_bench.cli.parse_args's namespace."""
    targets = csv(args.frameworks)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise DenseNetError(f"unknown frameworks {unknown}; known: {', '.join(TARGETS)}")
    if args.peers:
        targets += [p for t in targets if (p := peer_of(t))]
    order = list(TARGETS)  # registry order, each peer right after ours
    targets = sorted(dict.fromkeys(targets), key=order.index)
    presets = csv(args.preset)
    unknown = [p for p in presets if p not in BENCH_PRESETS]
    if unknown:
        raise UnknownPresetError(
            f"unknown preset {unknown[0]!r}; known presets: {', '.join(BENCH_PRESETS)}"
        )
    models = csv(args.model)
    bad = [m for m in models if m not in VARIANTS]
    if bad or not models:
        raise DenseNetError(f"unknown model variants {bad}; known: {', '.join(VARIANTS)}")
    batches = ints(args.batch, "--batch")
    known_fast = fast_paths()
    fast = csv(args.fast)
    if fast == ["all"]:
        fast = known_fast
    elif fast == ["none"]:
        fast = []
    bad = [f for f in fast if f not in known_fast]
    if bad:
        raise DenseNetError(f"unknown fast paths {bad}; known: {', '.join(known_fast)}")
    if args.iters < 1 or args.warmup < 0 or args.rounds < 1:
        raise DenseNetError("--iters and --rounds must be >= 1, --warmup >= 0")
    overrides = dict(_pair(e) for e in args.env)
    modes = MODES if args.mode == "both" else (args.mode,)
    checkpointed = {"off": [False], "on": [True], "both": [False, True]}[args.memory_efficient]
    runs, notes = [], []
    for name, preset in itertools.product(targets, presets):
        target, config = TARGETS[name], BENCH_PRESETS[preset]
        if target.presets is not None and preset not in target.presets:
            notes.append(f"{name}: no official {preset} (has {', '.join(target.presets)})")
            continue
        memory_efficient = checkpointed
        if True in checkpointed and not target.memory_efficient:
            notes.append(f"{name}: no memory-efficient mode")
            memory_efficient = [m for m in checkpointed if not m]
        variants = [target.variants[0]] + [v for v in target.variants[1:] if v in fast]
        sizes = ints(args.image_size, "--image-size") if args.image_size else [default_size(config)]
        target_models = [m for m in target.models if m is None or m in models]
        for model, variant, batch, size, mode, me in itertools.product(
            target_models, variants, batches, sizes, modes, memory_efficient
        ):
            req = Request(
                target=name,
                model=model,
                variant=variant,
                mode=mode,
                preset=preset,
                config=config.to_dict(),
                batch=batch,
                image_size=size,
                iters=args.iters,
                warmup=args.warmup,
                memory_efficient=me,
                device=args.device,
                threads=args.threads,
                seed=args.seed,
            )
            runs.append(Run(target, overrides.get(name, target.env), req))
    return runs, notes


def _pair(text: str) -> tuple[str, str]:
    name, sep, env = text.partition("=")
    if not sep or name not in TARGETS:
        raise DenseNetError(f"--env takes TARGET=ENV with a known target, got {text!r}")
    return name, env


def schedule(runs: list[Run], rounds: int) -> list[tuple[int, Run]]:
    """Every run `rounds` times, in reverse order every other round (ours, peer / peer, ours)."""
    return [(r, run) for r in range(1, rounds + 1) for run in (runs if r % 2 else runs[::-1])]


def default_frameworks() -> str:
    return ",".join(FRAMEWORKS)
