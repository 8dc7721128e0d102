"""densenet-bench: time our DenseNet in each framework, beside that framework's official DenseNet.

Every measurement (target, variant, preset, batch, image size, mode) runs in its own process with
the target's own environment's Python (benchmarks.runner), on synthetic data, so peak memory and
the first (compiling) call belong to that measurement alone. Each result is appended to --json as
one JSON line; a table closes the run. Timings are medians of the timed iterations after warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import flops
import densenet_envs as envs
from benchmarks.timing import MODES, Request
from densenet_spec.config import PRESETS, DenseNetConfig
from densenet_spec.frameworks import FRAMEWORKS
from densenet_spec.errors import DenseNetError, UnknownPresetError

SCHEMA = "densenet-bench/1"
OFFICIAL = ("densenet121", "densenet161", "densenet169", "densenet201")
# The paper's deepest ImageNet DenseNet-BC (Table 1), for memory against depth; a benchmark
# config only (no official implementation ships it, so it is no spec preset).
BENCH_PRESETS = {
    **PRESETS,
    "densenet264": DenseNetConfig(32, (6, 12, 64, 48), 64, "imagenet", 4, 0.5, False, 3, 1000),
}


@dataclass(frozen=True)
class Target:
    """Something to time: our DenseNet in one framework, or that framework's official one."""

    name: str
    framework: str
    implementation: str
    env: str
    variants: tuple[str, ...]  # the baseline first, then the fast paths
    presets: tuple[str, ...] | None = None  # None: any config
    memory_efficient: bool = True
    keras_backend: str | None = None


TARGETS = {
    t.name: t
    for t in (
        Target("torch", "torch", "ours", "torch", ("eager", "channels_last", "compile")),
        Target("jax", "jax", "ours", "jax", ("jit", "functional")),
        Target("tf", "tf", "ours", "tf", ("function", "xla")),
        Target("mx", "mx", "ours", "mx", ("imperative", "hybridize")),
        Target("torchvision", "torch", "torchvision", "bench-torchvision",
               ("eager", "channels_last", "compile"), OFFICIAL),
        Target("keras-jax", "jax", "keras.applications", "bench-keras-jax", ("jit",),
               ("densenet121", "densenet169", "densenet201"), False, "jax"),
        Target("keras-tf", "tf", "keras.applications", "tf", ("function", "xla"),
               ("densenet121", "densenet169", "densenet201"), False, "tensorflow"),
        Target("gluon", "mx", "gluon model zoo", "mx", ("imperative", "hybridize"),
               OFFICIAL, False),
    )
}
PEERS = {"torch": "torchvision", "jax": "keras-jax", "tf": "keras-tf", "mx": "gluon"}
FAST_PATHS = sorted({v for t in TARGETS.values() for v in t.variants[1:]})


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="densenet-bench",
        description="Inference and training throughput, first-call (compile) time and peak memory "
        "of our DenseNet in each framework, optionally beside each framework's official DenseNet, "
        "with the machine's float32 matmul peak for reference.",
    )
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                   help="comma-separated targets (default: all of ours); "
                   f"known: {', '.join(TARGETS)}")
    p.add_argument("--peers", action="store_true",
                   help="add each framework's official DenseNet: torchvision, keras.applications "
                   "(JAX and TF backends), the Gluon model zoo (random weights, never downloaded)")
    p.add_argument("--preset", default="densenet121",
                   help=f"comma-separated; known: {', '.join(BENCH_PRESETS)} "
                   "(default densenet121)")
    p.add_argument("--batch", default="16", help="comma-separated batch sizes (default 16)")
    p.add_argument("--image-size", default=None,
                   help="comma-separated square sizes (default 224, or 32 for the CIFAR stem)")
    p.add_argument("--mode", default="both", choices=("infer", "train", "both"))
    p.add_argument("--iters", type=int, default=10, help="timed iterations (default 10)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed iterations after the first call (default 2)")
    p.add_argument("--fast", default="none",
                   help="fast paths to measure as well as each baseline, comma-separated, or all / "
                   f"none (default none); known: {', '.join(FAST_PATHS)}")
    p.add_argument("--memory-efficient", nargs="?", const="on", default="off",
                   choices=("off", "on", "both"),
                   help="checkpointed dense layers (memory_efficient=True): alone or 'on' instead "
                   "of the plain layers, 'both' for plain and checkpointed side by side; targets "
                   "without it are skipped")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--threads", type=int, default=None,
                   help="threads per framework (OMP/MKL variables and the framework's own setting)")
    p.add_argument("--huge-pages", action="store_true",
                   help="every runner (ours and peers alike) asks glibc malloc for transparent "
                   "huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1; a no-op where the kernel "
                   "has none): 512x fewer page faults for memory allocated afresh each step")
    p.add_argument("--env", action="append", default=[], metavar="TARGET=ENV",
                   help="run a target in another environment, e.g. torch=bench-torchvision "
                   "(ours on the peer's torch version)")
    p.add_argument("--json", type=Path, help="append one JSON line per result here")
    p.add_argument("--peak-size", type=int, default=2048,
                   help="n of the n x n float32 matmul that measures the machine's peak (0: skip)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=1,
                   help="make every measurement R times, in reverse order every other round "
                        "(ours, peer / peer, ours), so that a slow phase of the machine does not "
                        "fall on one side only; the table pools the timed steps of all rounds "
                        "(the JSON file keeps one line per round)")
    p.add_argument("--no-setup", action="store_true", help="do not build missing environments")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(s) for s in _csv(text)]
    except ValueError:
        raise DenseNetError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise DenseNetError(f"{flag} values must be >= 1, got {text!r}")
    return values


def plan(args) -> tuple[list[tuple[Target, str, Request]], list[str]]:
    """Every measurement to make, in order, and a note for every combination skipped."""
    targets = _csv(args.frameworks)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise DenseNetError(f"unknown frameworks {unknown}; known: {', '.join(TARGETS)}")
    if args.peers:
        targets += [PEERS[t] for t in targets if t in PEERS]
    order = [n for fw in FRAMEWORKS for n in (fw, PEERS[fw])]  # each peer right after ours
    targets = sorted(dict.fromkeys(targets), key=order.index)
    presets = _csv(args.preset)
    unknown = [p for p in presets if p not in BENCH_PRESETS]
    if unknown:
        raise UnknownPresetError(
            f"unknown preset {unknown[0]!r}; known presets: {', '.join(BENCH_PRESETS)}"
        )
    configs = {name: BENCH_PRESETS[name] for name in presets}
    batches = _ints(args.batch, "--batch")
    fast = _csv(args.fast)
    if fast == ["all"]:
        fast = FAST_PATHS
    elif fast == ["none"]:
        fast = []
    bad = [f for f in fast if f not in FAST_PATHS]
    if bad:
        raise DenseNetError(f"unknown fast paths {bad}; known: {', '.join(FAST_PATHS)}")
    if args.iters < 1 or args.warmup < 0 or args.rounds < 1:
        raise DenseNetError("--iters and --rounds must be >= 1, --warmup >= 0")
    overrides = dict(_pair(e) for e in args.env)
    modes = MODES if args.mode == "both" else (args.mode,)
    checkpointed = {"off": [False], "on": [True], "both": [False, True]}[args.memory_efficient]
    runs, notes = [], []
    for name, preset in itertools.product(targets, presets):
        target, config = TARGETS[name], configs[preset]
        if target.presets is not None and preset not in target.presets:
            notes.append(f"{name}: no official {preset} (has {', '.join(target.presets)})")
            continue
        memory_efficient = checkpointed
        if True in checkpointed and not target.memory_efficient:
            notes.append(f"{name}: no memory-efficient mode")
            memory_efficient = [m for m in checkpointed if not m]
        variants = [target.variants[0]] + [v for v in target.variants[1:] if v in fast]
        sizes = [_default_size(config)]
        if args.image_size:
            sizes = _ints(args.image_size, "--image-size")
        for variant, batch, size, mode, me in itertools.product(
            variants, batches, sizes, modes, memory_efficient
        ):
            req = Request(
                target=name, variant=variant, mode=mode, preset=preset, config=config.to_dict(),
                batch=batch, image_size=size, iters=args.iters, warmup=args.warmup,
                memory_efficient=me, device=args.device, threads=args.threads, seed=args.seed,
            )
            runs.append((target, overrides.get(name, target.env), req))
    return runs, notes


def _pair(text: str) -> tuple[str, str]:
    name, sep, env = text.partition("=")
    if not sep or name not in TARGETS:
        raise DenseNetError(f"--env takes TARGET=ENV with a known target, got {text!r}")
    return name, env


def _default_size(config: DenseNetConfig) -> int:
    return 32 if config.stem == "cifar" else 224


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def runner_env(env_name: str, keras_backend: str | None, threads: int | None,
               huge_pages: bool = False) -> dict:
    """The environment's worker variables, plus the Keras backend, thread-count variables and
    the malloc setting."""
    env = envs.worker_env(env_name)
    if huge_pages:
        tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
        env["GLIBC_TUNABLES"] = ":".join([*tunables, HUGE_PAGES_TUNABLE])
    if keras_backend:
        env["KERAS_BACKEND"] = keras_backend
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MXNET_CPU_WORKER_NTHREADS", "TF_NUM_INTRAOP_THREADS"):
            env[var] = str(threads)
    return env


def run_one(target: Target, env_name: str, req: Request, timeout: int,
            huge_pages: bool = False) -> tuple[dict, list[str]]:
    """Start the runner in the target's environment; return its answer and the command."""
    python = envs.env_python(env_name)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [str(python), "-m", "benchmarks.runner", json.dumps(req.to_dict()), str(out)]
        env = runner_env(env_name, target.keras_backend, req.threads, huge_pages)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                                  cwd=envs.ROOT)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout} s"}, cmd
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            return {"ok": False, "error": f"runner exited {proc.returncode}:\n{tail}"}, cmd
        return json.loads(out.read_text()), cmd


def measure_peak(n: int, threads: int | None) -> dict:
    """The float32 matmul peak, in its own spec-environment process with the runners' threads."""
    cmd = [sys.executable, "-m", "benchmarks.peak", str(n), str(threads or 0)]
    env = runner_env("spec", None, threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=envs.ROOT,
                          check=True)
    return json.loads(proc.stdout)


def result_line(target: Target, env_name: str, req: Request, answer: dict, peak: dict | None,
                command: str, runner_cmd: list[str], huge_pages: bool = False) -> dict:
    """One JSON line: what was asked, what the runner measured, and what follows from it."""
    config = req.densenet_config()
    line = {
        "schema": SCHEMA,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": target.name,
        "framework": target.framework,
        "implementation": target.implementation,
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
        "env": env_name,
        "huge_pages": huge_pages,
        **answer,
        "config": config.to_dict(),
        "forward_gmac": flops.forward_macs(config, req.image_size) / 1e9,
        "peak": peak,
        "command": command,
        "runner_command": shlex.join(runner_cmd),
    }
    if answer.get("ok"):
        from benchmarks.report import rates  # report needs rich, as main does

        line.update(rates(line))
    return line


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from benchmarks import report

    console = report.console()
    try:
        runs, notes = plan(args)
    except DenseNetError as e:
        console.print(f"[bold red]error:[/] {e}")
        return 2
    command = "densenet-bench " + shlex.join(argv)
    ready, failed_env = set(), {}
    for env_name in dict.fromkeys(env for _, env, _ in runs):
        try:
            if args.no_setup:
                python = envs.env_python(env_name)
                if not python.exists():
                    raise DenseNetError(f"no {env_name} environment at {python}")
            else:
                envs.ensure_env(env_name, lambda m: console.print(f"[dim]{m}[/]"))
            ready.add(env_name)
        except DenseNetError as e:
            failed_env[env_name] = str(e)
    peak = None
    if args.peak_size:
        peak = measure_peak(args.peak_size, args.threads)
        console.print(f"[dim]machine peak: float32 {args.peak_size}^2 matmul {peak['gflops']:.1f} "
                      f"GFLOP/s ({peak['blas']}), load average {peak['load_avg'][0]:.2f}[/]")
    lines = []
    run_id = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
    schedule = [(r, run) for r in range(1, args.rounds + 1)
                for run in (runs if r % 2 else runs[::-1])]
    for i, (round_, (target, env_name, req)) in enumerate(schedule, 1):
        label = (f"{target.name}/{req.variant} {req.preset} batch {req.batch} "
                 f"{req.image_size}px {req.mode}")
        if args.rounds > 1:
            label += f", round {round_}/{args.rounds}"
        console.print(f"[dim][{i}/{len(schedule)}] {label}[/]")
        if env_name not in ready:
            answer, cmd = {"ok": False, "error": failed_env[env_name]}, []
        else:
            start = time.perf_counter()
            answer, cmd = run_one(target, env_name, req, args.timeout, args.huge_pages)
            answer.setdefault("wall_s", time.perf_counter() - start)
        line = result_line(target, env_name, req, answer, peak, command, cmd, args.huge_pages)
        line.update(run_id=run_id, round=round_, rounds=args.rounds)
        lines.append(line)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            with open(args.json, "a") as f:
                f.write(json.dumps(line) + "\n")
    report.print_table(report.pool_rounds(lines), console)
    for note in notes:
        console.print(f"[dim]skipped {note}[/]")
    if args.json:
        console.print(f"[dim]{len(lines)} result lines appended to {args.json}[/]")
    return 0 if all(line.get("ok") or line.get("skipped") for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
