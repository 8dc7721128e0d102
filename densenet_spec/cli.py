"""densenet-parity: run every framework on one case; compare each with the oracle and the others."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from rich.markup import escape

from densenet_spec.case import DEVICES, QUANTITIES, SGDConfig, make_case
from densenet_spec.config import PRESETS, get_preset
from densenet_spec.errors import DenseNetError, UsageError
from densenet_spec.frameworks import EXPORT_TARGETS, FRAMEWORKS, VARIANTS, parse_frameworks
from densenet_spec.harness import (
    MUTATIONS,
    WORKER_TIMEOUT_S,
    Terminated,
    check_targets,
    terminate_as_interrupt,
)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="densenet-parity",
        description="Load equal weights into every framework, run forward (eval and train mode), "
        "gradients and SGD steps, and compare each framework with the NumPy oracle and with "
        "each other.",
    )
    p.add_argument(
        "--preset",
        default=None,
        help=f"one of: {', '.join(PRESETS)} (default d2l; with --weights the file's "
        "architecture, which a given --preset must match)",
    )
    p.add_argument(
        "--weights",
        type=Path,
        metavar="FILE",
        help="run on these weights instead of random ones: a canonical .safetensors, a "
        "torchvision/timm state_dict (.pth, .pt, .bin, .safetensors), keras.applications "
        "(.weights.h5, .keras) or Gluon model-zoo .params (densenet-convert reads it, the config "
        "comes from the file)",
    )
    p.add_argument(
        "--weights-format",
        metavar="FMT",
        help="the format of --weights when its name does not tell (canonical, torchvision, "
        "timm, keras, gluon)",
    )
    p.add_argument(
        "--frameworks",
        default=",".join(FRAMEWORKS),
        help="comma-separated (default: all frameworks); export targets too: "
        f"{', '.join(EXPORT_TARGETS)} (e.g. torch,onnx --quantities eval --dtype float32)",
    )
    p.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument(
        "--image-size", type=int, default=None, help="default: 96 for d2l, 64 ImageNet, 32 CIFAR"
    )
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument(
        "--steps", type=int, default=1, help="SGD-momentum steps K (same batches for all)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data",
        choices=("digits", "fashion-mnist"),
        help="real batches instead of random ones: densenet-train's first K batches of this data "
        "with --seed (1 input channel and the data's classes set in the config)",
    )
    p.add_argument("--data-dir", type=Path, help="with --data fashion-mnist: the idx files' folder")
    p.add_argument("--lr", type=float, default=SGDConfig.lr)
    p.add_argument("--momentum", type=float, default=SGDConfig.momentum)
    p.add_argument("--weight-decay", type=float, default=SGDConfig.weight_decay)
    p.add_argument(
        "--quantities", default=",".join(QUANTITIES), help="subset of eval,train,grad,step"
    )
    p.add_argument("--memory-efficient", action="store_true", help="checkpointed dense layers")
    p.add_argument(
        "--variant",
        default="plain",
        choices=VARIANTS,
        help="plain: the teaching model (layers.py, model.py); fast: the framework's performance "
        "modules injected where its backend has them (default plain)",
    )
    p.add_argument(
        "--mutate",
        action="append",
        default=[],
        metavar="FRAMEWORK:KIND",
        help="self-check: perturb one framework (KIND bn_eps, same_padding: the forward; "
        "grad_scale: one weight gradient only); the run must then fail and name the first "
        "diverging stage or the mutated gradient",
    )
    p.add_argument("--json", type=Path, help="write every comparison with its error and bound here")
    p.add_argument(
        "--report", type=Path, help="write parity.md, parity.html (heatmap) and parity.json here"
    )
    p.add_argument("--no-setup", action="store_true", help="do not build missing environments")
    p.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="FRAMEWORK=PATH",
        help="run FRAMEWORK's worker with this existing interpreter instead of the project's "
        "environment (repeatable; or DENSENET_PYTHON_<FRAMEWORK>); checked first, never modified",
    )
    p.add_argument(
        "--tf32",
        default="off",
        choices=("off", "default"),
        help="float32 on GPUs: off (parity: full float32 matmuls and convolutions) or the "
        "framework's default (TF32 where it uses it; reported, expected to exceed float32 bounds)",
    )
    p.add_argument(
        "--worker-timeout",
        type=float,
        default=WORKER_TIMEOUT_S,
        metavar="S",
        help="seconds one framework's worker may run before it is killed "
        f"(default {WORKER_TIMEOUT_S})",
    )
    # Data-parallel parity (issue 20): densenet_spec/replicas.py, docs/data_parallel.md
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="run each framework data-parallel on N replicas (its own engine: torch DDP, ...), "
        "the batch split into N equal shards, and compare with the oracle's replica semantics "
        "(quantities eval, train, grad, step)",
    )
    p.add_argument(
        "--bn-sync",
        default="synchronised",
        choices=("synchronised", "per-replica"),
        help="with --replicas: BatchNorm statistics over the whole batch (the one-device step) "
        "or each replica's own shard (default synchronised)",
    )
    p.add_argument(
        "--replica-buffers",
        default="broadcast",
        choices=("broadcast", "local"),
        help="with --replicas: each step's running statistics start from replica 0's "
        "(broadcast, torch DDP's default) or each replica's own (local)",
    )
    p.add_argument(
        "--replica-processes",
        action="store_true",
        help="with --replicas: one process per replica on every engine (torch always; JAX "
        "jax.distributed, TF MultiWorkerMirroredStrategy, MXNet dist_sync) instead of one "
        "process over N devices",
    )
    return p.parse_args(argv)


# Inputs of a parity case (x and the K step batches) above this many values are a typo, not a
# test: 2^30 float64 values are 8 GiB before any activation is stored.
MAX_INPUT_ELEMENTS = 2**30


def _number(args, option: str, low: float, high: float, interval: str) -> None:
    """A finite number within `interval` ("(0, inf)", "[0, 1)", ...), or a UsageError naming it."""
    v = getattr(args, option.lstrip("-").replace("-", "_"))
    ok = math.isfinite(v) and (low < v if interval[0] == "(" else low <= v)
    ok = ok and (v < high if interval[-1] == ")" else v <= high)
    if not ok:
        raise UsageError(f"{option} must be a finite number in {interval}, got {v}")


def check_args(args, quantities) -> None:
    """Every numeric option in range, before anything runs (UsageError names the option)."""
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    if args.image_size is not None and args.image_size < 1:
        raise UsageError(f"--image-size must be >= 1, got {args.image_size}")
    if args.steps < 0:
        raise UsageError(f"--steps must be >= 0, got {args.steps}")
    if args.steps == 0 and "step" in quantities:
        raise UsageError(
            "--steps 0 with the step quantity checks nothing: give --steps >= 1, or leave step "
            "out of --quantities"
        )
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    _number(args, "--lr", 0.0, math.inf, "(0, inf)")
    _number(args, "--momentum", 0.0, 1.0, "[0, 1)")
    _number(args, "--weight-decay", 0.0, math.inf, "[0, inf)")
    _number(args, "--worker-timeout", 0.0, math.inf, "(0, inf)")


def check_writable(path: Path, option: str, *, folder: bool) -> None:
    """Find an output location we cannot write before the run, not after it: create the folder,
    write and remove a probe file there, and check that files we would replace are writable."""
    where = path if folder else path.parent
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: exists and is not a folder")
    if not folder and path.is_dir():
        raise UsageError(f"{option} {path}: is a directory; give a file name")
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=where, prefix=".densenet-parity-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"{option} {path}: cannot write there ({e.strerror or e})") from None
    targets = [where / n for n in ("parity.json", "parity.md", "parity.html")] if folder else [path]
    for t in targets:
        if t.exists() and not os.access(t, os.W_OK):
            raise UsageError(f"{option}: {t} exists and is not writable")


@dataclass(frozen=True)
class LoadedWeights:
    """--weights, read and converted: canonical tensors, the file's config, and for the report
    where they came from."""

    config: object  # DenseNetConfig
    params: dict
    info: dict  # file, format, config (one line), preset, dtype


def read_weights(
    path: Path, fmt: str | None, preset: str | None, *, setup: bool, log
) -> LoadedWeights:
    """The weights of any format densenet-convert reads, converted to canonical tensors up front
    (a framework's format in that framework's environment, built first unless --no-setup); the
    config comes from the file. Bad files raise the converter's named errors (NotADenseNetError,
    UnknownFormatError, UnrecognisedConfigError, ...); a --preset the file is not raises
    UnrecognisedConfigError."""
    from densenet_convert import formats
    from densenet_convert.cli import convert
    from densenet_convert.recognise import check_preset, describe, preset_name
    from densenet_spec import weightfile

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--weights {path}: no such file")
    fmt = formats.get_format(fmt).name if fmt else formats.detect_format(path, exists=True)
    env = formats.env_for(fmt, path)
    if setup and env != "spec":
        import densenet_envs

        densenet_envs.ensure_env(env, log)
    with tempfile.TemporaryDirectory(prefix="densenet-parity-weights-") as tmp:
        canonical = path
        if fmt != "canonical":
            canonical = Path(tmp) / "weights.safetensors"
            convert(path, canonical, fmt, "canonical", log=_without_temporary(log))
        params, config = weightfile.load_weights(canonical)
    if preset:
        check_preset(config, preset)
    dtype = str(next(iter(params.values())).dtype)
    info = {
        "file": str(path),
        "format": fmt,
        "preset": preset_name(config),
        "dtype": dtype,
        "config": describe(config),
    }
    return LoadedWeights(config, params, info)


def _without_temporary(log):
    """The converter's "read FORMAT FILE: config" line; its "wrote <temporary file>" is no news."""

    def quiet(message: str) -> None:
        if not message.startswith("wrote"):
            log(message)

    return quiet


class Prepared(NamedTuple):
    config: object  # DenseNetConfig
    frameworks: list
    quantities: tuple
    mutations: dict
    size: int
    weights: LoadedWeights | None = None
    batches: tuple | None = None  # --data: (inputs, labels), data.training_batches


def prepare(args, log=lambda *_: None) -> Prepared:
    """(config, frameworks, quantities, mutations, image size, weights) from parsed arguments,
    every one checked before anything runs or is written (cheap checks first, then --weights is
    read and converted); DenseNetError (UsageError, ...) names the option."""
    frameworks = parse_frameworks(args.frameworks)
    quantities = tuple(q.strip() for q in args.quantities.split(",") if q.strip())
    if not quantities:
        raise UsageError(f"--quantities names none of {', '.join(QUANTITIES)}")
    bad = [q for q in quantities if q not in QUANTITIES]
    if bad:
        raise UsageError(f"unknown quantities {bad}; known: {', '.join(QUANTITIES)}")
    mutations = {}
    kinds = _mutation_kinds(args)
    for m in args.mutate:
        fw, _, kind = m.partition(":")
        if fw not in frameworks or kind not in kinds:
            raise UsageError(
                f"--mutate {m!r}: expected FRAMEWORK:KIND with FRAMEWORK one of the run's "
                f"frameworks and KIND one of {', '.join(kinds)}"
            )
        mutations[fw] = kind
    check_args(args, quantities)
    check_targets(frameworks, quantities, args.dtype, args.device, mutations)
    weights_arg = getattr(args, "weights", None)
    if getattr(args, "weights_format", None) and weights_arg is None:
        raise UsageError("--weights-format names the format of --weights: give --weights FILE")
    weights = None
    if weights_arg is not None:
        weights = read_weights(
            weights_arg,
            args.weights_format,
            args.preset,
            setup=not getattr(args, "no_setup", False),
            log=log,
        )
        config = weights.config
    else:
        config = get_preset(args.preset or "d2l")
    from densenet_spec.config import check_input_shape
    from densenet_spec.harness import default_image_size, expected_parts

    for kind in mutations.values():
        try:
            expected_parts(config, kind, quantities)
        except ValueError as e:
            raise UsageError(f"--mutate: {e}") from None
    config, raw = data_config(args, config, weights)
    size = default_image_size(config) if args.image_size is None else args.image_size
    check_input_shape(config, (args.batch, config.in_channels, size, size), training=True)
    elements = args.batch * config.in_channels * size * size * (args.steps + 1)
    if elements > MAX_INPUT_ELEMENTS:
        raise UsageError(
            f"--batch {args.batch} x {size}x{size} images x {args.steps + 1} batches is "
            f"{elements:.2e} input values, over the {MAX_INPUT_ELEMENTS:.1e} a parity case allows"
        )
    batches = None
    if raw is not None:
        from densenet_spec import data

        batches = data.training_batches(
            raw,
            data.preprocess_for(raw, size),
            batch=args.batch,
            steps=max(args.steps, 1),
            seed=args.seed,
            dtype=args.dtype,
        )
    check_pythons(args, frameworks)  # last: it probes every named interpreter (seconds each)
    return Prepared(config, frameworks, quantities, mutations, size, weights, batches)


def _case_options(args) -> dict:
    options = {"tf32": args.tf32} if args.tf32 != "off" else {}
    if getattr(args, "data", None):
        options["data"] = args.data  # for the report: where the batches come from
    return options


def data_config(args, config, weights):
    """--data: (the config with the data's channels and classes, the loaded data), else (config,
    None). Given --weights must already fit the data: a ConfigError names what differs."""
    data_name, data_dir = getattr(args, "data", None), getattr(args, "data_dir", None)
    if data_dir is not None and data_name != "fashion-mnist":
        raise UsageError("--data-dir: only --data fashion-mnist reads files")
    if data_name is None:
        return config, None
    from densenet_spec import data
    from densenet_spec.errors import ConfigError

    raw = data.load(data_name, data_dir)
    fitted = config.replace(in_channels=1, num_classes=raw.classes)
    if weights is not None and fitted != config:
        raise ConfigError(
            f"--weights has {config.in_channels} input channels and {config.num_classes} classes; "
            f"--data {data_name} has 1 and {raw.classes}"
        )
    return fitted, raw


def check_pythons(args, frameworks) -> dict:
    """--python FRAMEWORK=PATH as args.pythons, each interpreter named there or by
    DENSENET_PYTHON_<FRAMEWORK> checked before anything runs (densenet_envs.interpreters: a
    named error otherwise). Export targets run in their framework's interpreter (onnx: torch)."""
    import densenet_envs as envs
    from densenet_envs.interpreters import unused_overrides
    from densenet_spec.frameworks import worker_framework

    runs_in = list(dict.fromkeys(worker_framework(f) for f in frameworks))
    args.pythons = envs.parse_python_args(getattr(args, "python", []))
    unused = unused_overrides(args.pythons, runs_in)
    if unused:
        raise UsageError(f"--python {', '.join(unused)}: not in --frameworks")
    envs.check_pythons(runs_in, args.pythons, device=args.device)
    return args.pythons


def _mutation_kinds(args) -> tuple:
    """--mutate kinds: with --replicas N > 1 only bn_sync (the other BatchNorm semantics)."""
    from densenet_spec.harness import REPLICA_MUTATIONS

    replicas = getattr(args, "replicas", 1)
    if replicas < 1:
        raise UsageError(f"--replicas must be >= 1, got {replicas}")
    return REPLICA_MUTATIONS if replicas > 1 else MUTATIONS


def _replica_case(args, case):
    """--replicas N > 1: the case as a replica case (replicas.py), or a UsageError."""
    from densenet_spec import replicas

    return replicas.replica_case(
        case, args.replicas, args.bn_sync, args.replica_buffers, args.replica_processes
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from densenet_spec import report

    console = report.console()
    try:
        config, frameworks, quantities, mutations, size, weights, batches = prepare(
            args, log=report.logger(console)
        )
        if args.json:
            check_writable(args.json, "--json", folder=False)
        if args.report:
            check_writable(args.report, "--report", folder=True)
        from densenet_spec.harness import run_parity, run_replica_parity

        case = make_case(
            config,
            batch=args.batch,
            image_size=size,
            dtype=args.dtype,
            device=args.device,
            seed=args.seed,
            steps=args.steps,
            quantities=quantities,
            sgd=SGDConfig(args.lr, args.momentum, args.weight_decay),
            memory_efficient=args.memory_efficient,
            variant=args.variant,
            params=weights.params if weights else None,
            batches=batches,
            options=_case_options(args),
        )
        if getattr(args, "replicas", 1) > 1:
            case = _replica_case(args, case)
    except DenseNetError as e:
        console.print(f"[bold red]error:[/] {type(e).__name__}: {escape(str(e))}")
        return 2
    except subprocess.TimeoutExpired as e:  # a converter worker (--weights) ran too long
        console.print(f"[bold red]error:[/] --weights: a conversion worker ran past {e.timeout} s")
        return 2
    command = "densenet-parity " + " ".join(shlex.quote(a) for a in argv)
    # Ctrl-C and SIGTERM take the same way out: the running worker's process group is killed and
    # the temporary case folder removed as the exception unwinds (harness.run_process).
    try:
        with terminate_as_interrupt(), console.status("starting", spinner="dots") as status:
            run = run_replica_parity if args.replicas > 1 else run_parity  # issue 20
            result = run(
                case,
                frameworks,
                setup=not args.no_setup,
                log=report.logger(console, status),
                command=command,
                mutations=mutations,
                worker_timeout=args.worker_timeout,
                weights=weights.info if weights else None,
                pythons=args.pythons,
            )
    except (KeyboardInterrupt, Terminated) as e:
        name = "SIGINT" if isinstance(e, KeyboardInterrupt) else str(e)
        console.print(
            f"[bold red]interrupted[/] by {name}: workers stopped, temporary files removed"
        )
        return 128 + (signal.SIGINT if isinstance(e, KeyboardInterrupt) else e.signum)
    report.print_report(result, console)
    print_sources(result, console)
    written = True
    if args.json:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result.to_json(), indent=1))
            console.print(f"JSON report: {args.json}")
        except OSError as e:
            console.print(f"[bold red]error:[/] --json {args.json}: not written ({e})")
            written = False
    if args.report:
        from densenet_spec.report_files import write_report

        try:
            paths = write_report(result, args.report)
            console.print(
                f"report: {paths['html']} (and {paths['markdown'].name}, {paths['json'].name})"
            )
        except OSError as e:
            console.print(f"[bold red]error:[/] --report {args.report}: not written ({e})")
            written = False
    if not written:
        return 2
    if mutations:
        from densenet_spec.harness import self_check

        problems = self_check(result)
        for line in problems:
            console.print(f"[bold red]self-check:[/] {line}")
        console.print(
            "[bold green]SELF-CHECK OK[/]: the report failed where the mutation was made"
            if not problems
            else "[bold red]SELF-CHECK FAILED[/]"
        )
        return 0 if not problems else 1
    return 0 if result.ok else 1


def print_sources(result, console) -> None:
    """Where the weights came from (--weights) and what each export target ran (opset, graph)."""
    if result.weights:
        w = result.weights
        console.print(
            f"weights: {escape(w['file'])} ({w['format']}, {w['dtype']}): {escape(w['config'])}"
        )
    for name, run in result.runs.items():
        if name not in EXPORT_TARGETS or not run.ok:
            continue
        graph = run.info.get("graph", {})
        eps = graph.get("bn_epsilons", [])
        console.print(
            f"{name}: {run.info.get('target', '')}, opset {run.info.get('opset')}, "
            f"onnxruntime {run.info.get('versions', {}).get('onnxruntime')}; graph checked: "
            f"symmetric padding, {graph.get('nodes', {}).get('BatchNormalization', 0)} "
            f"BatchNormalization nodes, epsilon {', '.join(f'{e:g}' for e in eps)}; "
            f"{run.info.get('float64', '')}"
        )


if __name__ == "__main__":
    sys.exit(main())
