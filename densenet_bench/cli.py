"""densenet-bench: time our DenseNet in each framework, beside that framework's official DenseNet.

Every measurement (target, model variant, execution variant, preset, batch, image size, mode) runs
in its own process with the target's own environment's Python (densenet_bench.launch), on synthetic
data, so peak memory and the first (compiling) call belong to that measurement alone. Each result
is appended to --json as one JSON line; a table closes the run. Timings are medians of the timed
iterations after warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path
from typing import NamedTuple

import densenet_envs as envs
from densenet_bench import metrics
from densenet_bench.launch import measure_peak, run_one
from densenet_bench.plan import BENCH_PRESETS, Run, default_frameworks, plan, schedule
from densenet_bench.results import SCHEMA, pool_rounds
from densenet_bench.targets import TARGETS, fast_paths
from densenet_spec.errors import DenseNetError, UsageError
from densenet_spec.frameworks import VARIANTS


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="densenet-bench",
        description="Inference and training throughput, first-call (compile) time and peak memory "
        "of our DenseNet in each framework, optionally beside each framework's official DenseNet, "
        "with the machine's float32 matmul peak for reference.",
    )
    p.add_argument(
        "--frameworks",
        default=default_frameworks(),
        help=f"comma-separated targets (default: all of ours); known: {', '.join(TARGETS)}",
    )
    p.add_argument(
        "--peers",
        action="store_true",
        help="add each framework's official DenseNet: torchvision, keras.applications "
        "(JAX and TF backends), the Gluon model zoo (random weights, never downloaded)",
    )
    p.add_argument(
        "--model",
        default=",".join(VARIANTS),
        help="our model variants, comma-separated (default: all): plain is the teaching "
        "model of layers.py and model.py, fast adds the framework's performance modules "
        "(variants.make_model); peers have one model of their own",
    )
    p.add_argument(
        "--preset",
        default="densenet121",
        help=f"comma-separated; known: {', '.join(BENCH_PRESETS)} (default densenet121)",
    )
    p.add_argument("--batch", default="16", help="comma-separated batch sizes (default 16)")
    p.add_argument(
        "--image-size",
        default=None,
        help="comma-separated square sizes (default 224, or 32 for the CIFAR stem)",
    )
    p.add_argument("--mode", default="both", choices=("infer", "train", "both"))
    p.add_argument("--iters", type=int, default=10, help="timed iterations (default 10)")
    p.add_argument(
        "--warmup", type=int, default=2, help="untimed iterations after the first call (default 2)"
    )
    p.add_argument(
        "--fast",
        default="none",
        help="execution fast paths to measure as well as each baseline, comma-separated, "
        f"or all / none (default none); known: {', '.join(fast_paths())}",
    )
    p.add_argument(
        "--memory-efficient",
        nargs="?",
        const="on",
        default="off",
        choices=("off", "on", "both"),
        help="checkpointed dense layers (memory_efficient=True): alone or 'on' instead "
        "of the plain layers, 'both' for plain and checkpointed side by side; targets "
        "without it are skipped",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per framework (OMP/MKL variables and the framework's own setting)",
    )
    p.add_argument(
        "--huge-pages",
        action="store_true",
        help="every runner (ours and peers alike) asks glibc malloc for transparent "
        "huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1; a no-op where the kernel "
        "has none): 512x fewer page faults for memory allocated afresh each step",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="TARGET=ENV",
        help="run a target in another environment, e.g. torch=bench-torchvision "
        "(ours on the peer's torch version)",
    )
    p.add_argument("--json", type=Path, help="append one JSON line per result here")
    p.add_argument(
        "--peak-size",
        type=int,
        default=2048,
        help="n of the n x n float32 matmul that measures the machine's peak (0: skip)",
    )
    p.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="make every measurement R times, in reverse order every other round "
        "(ours, peer / peer, ours), so that a slow phase of the machine does not "
        "fall on one side only; the table pools the timed steps of all rounds "
        "(the JSON file keeps one line per round)",
    )
    p.add_argument("--no-setup", action="store_true", help="do not build missing environments")
    p.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="run a framework's or environment's runners with this existing interpreter instead "
        "of the project's environment (NAME: torch, jax, ... or bench-torchvision, "
        "bench-keras-jax; torch=PATH also serves torchvision unless bench-torchvision= is given; "
        "repeatable; or DENSENET_PYTHON_<NAME>); checked first, never modified",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--replicas",
        help="data-parallel training throughput at these replica counts instead (e.g. 1,2): "
        "each framework on its own engine, short densenet-train jobs on digits, the speedup "
        "against the same run's smallest count (densenet_bench/scaling.py)",
    )
    p.add_argument(
        "--bn-sync",
        default="synchronised",
        choices=("synchronised", "per-replica"),
        help="with --replicas: the BatchNorm semantics (docs/data_parallel.md)",
    )
    return p.parse_args(argv)


def result_line(
    run: Run,
    answer: dict,
    peak: dict | None,
    command: str,
    runner_cmd: list[str],
    huge_pages: bool = False,
) -> dict:
    """One JSON line: what was asked, what the runner measured, and what follows from it."""
    target, req = run.target, run.request
    config = req.densenet_config()
    line = {
        "schema": SCHEMA,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": target.name,
        "framework": target.framework,
        "implementation": target.implementation,
        "model": req.model,
        "variant": req.variant,
        "fast_path": req.variant != target.variants[0],
        "preset": req.preset,
        "batch": req.batch,
        "image_size": req.image_size,
        "mode": req.mode,
        "memory_efficient": req.memory_efficient,
        "device": req.device,
        "dtype": "float32",
        "iters": req.iters,
        "warmup": req.warmup,
        "env": run.env,
        "huge_pages": huge_pages,
        **answer,
        "config": config.to_dict(),
        "forward_gmac": metrics.forward_macs(config, req.image_size) / 1e9,
        "peak": peak,
        "command": command,
        "runner_command": shlex.join(runner_cmd),
    }
    if answer.get("ok"):
        line.update(metrics.rates(line))
    return line


def check_pythons(runs: list[Run], pythons: dict, device: str) -> None:
    """Every interpreter named by --python or DENSENET_PYTHON_<NAME> for the runs' environments
    checked before anything runs (densenet_envs.interpreters: a named error otherwise)."""
    from densenet_envs import interpreters

    frameworks = {run.env: run.target.framework for run in runs}
    unused = interpreters.unused_overrides(pythons, [*frameworks, *frameworks.values()])
    if unused:
        raise UsageError(f"--python {', '.join(unused)}: no target of this run uses it")
    for env_name, framework in frameworks.items():
        hit = interpreters.override_for(env_name, pythons, framework)
        if hit is not None:
            interpreters.check_interpreter(hit[0], env_name, device=device, source=hit[1])


class Interpreters(NamedTuple):
    """Per environment the runs need: why it cannot run (None: it can), its Python, and where
    that Python came from (densenet_envs.describe_python, for each result line)."""

    problems: dict
    pythons: dict
    described: dict


def _prepare_envs(
    runs: list[Run], no_setup: bool, log, pythons: dict | None = None, device: str = "cpu"
) -> Interpreters:
    """Each environment the runs need: the interpreter named for it (--python), else the
    project's environment for `device`, built unless no_setup."""
    found = Interpreters({}, {}, {})
    for run in runs:
        if run.env in found.problems:
            continue
        framework = run.target.framework
        try:
            found.pythons[run.env] = envs.python_for(
                run.env, pythons, setup=not no_setup, log=log, device=device, framework=framework
            )
            found.described[run.env] = envs.describe_python(
                run.env, pythons, device=device, framework=framework
            )
            found.problems[run.env] = None
        except DenseNetError as e:
            found.problems[run.env] = str(e)
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from densenet_bench import report  # rich

    console = report.console()
    if args.replicas:
        from densenet_bench.scaling import run_scaling

        try:
            args.pythons = envs.parse_python_args(args.python)
            lines = run_scaling(args, console, "densenet-bench " + shlex.join(argv))
        except DenseNetError as e:
            console.print(f"[bold red]error:[/] {type(e).__name__}: {e}")
            return 2
        return 0 if all(line["ok"] for line in lines) else 1
    try:
        pythons = envs.parse_python_args(args.python)
        runs, notes = plan(args)
        check_pythons(runs, pythons, args.device)
    except DenseNetError as e:
        console.print(f"[bold red]error:[/] {type(e).__name__}: {e}")
        return 2
    command = "densenet-bench " + shlex.join(argv)
    found = _prepare_envs(
        runs, args.no_setup, lambda m: console.print(f"[dim]{m}[/]"), pythons, args.device
    )
    peak = None
    if args.peak_size:
        peak = measure_peak(args.peak_size, args.threads)
        console.print(
            f"[dim]machine peak: float32 {args.peak_size}^2 matmul {peak['gflops']:.1f} "
            f"GFLOP/s ({peak['blas']}), load average {peak['load_avg'][0]:.2f}[/]"
        )
    lines = []
    run_id = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
    runs_in_order = schedule(runs, args.rounds)
    for i, (round_, run) in enumerate(runs_in_order, 1):
        req = run.request
        label = report.label(
            {"target": run.target.name, "model": req.model, "variant": req.variant}
        )
        label += f" {req.preset} batch {req.batch} {req.image_size}px {req.mode}"
        if args.rounds > 1:
            label += f", round {round_}/{args.rounds}"
        console.print(f"[dim][{i}/{len(runs_in_order)}] {label}[/]")
        if found.problems[run.env] is not None:
            answer, cmd = {"ok": False, "error": found.problems[run.env]}, []
        else:
            start = time.perf_counter()
            answer, cmd = run_one(
                run.env,
                req,
                args.timeout,
                run.target.keras_backend,
                args.huge_pages,
                python=found.pythons[run.env],
            )
            answer.setdefault("wall_s", time.perf_counter() - start)
        line = result_line(run, answer, peak, command, cmd, args.huge_pages)
        line["interpreter"] = found.described.get(run.env)
        line.update(run_id=run_id, round=round_, rounds=args.rounds)
        lines.append(line)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            with open(args.json, "a") as f:
                f.write(json.dumps(line) + "\n")
    report.print_table(pool_rounds(lines), console)
    for note in notes:
        console.print(f"[dim]skipped {note}[/]")
    if args.json:
        console.print(f"[dim]{len(lines)} result lines appended to {args.json}[/]")
    return 0 if all(line.get("ok") or line.get("skipped") for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
