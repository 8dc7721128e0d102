"""densenet-train: train the same DenseNet on the same batches in every framework, side by side.

Data are loaded, split and ordered once here (densenet_spec.data); each framework then runs the
framework-neutral training driver (densenet_spec.training) in its own environment, and a float64
run of the NumPy oracle over the first --reference-steps steps shows how far each framework's
losses drift from exact arithmetic. Output folder:

    data.safetensors           the stored images and labels, and how batches are prepared
    <framework>/metrics.jsonl  per-step and per-epoch metrics (JSON lines)
    <framework>/checkpoints/   epoch-NNN/ (and step-NNNNNN/ where a run stops mid-epoch)
    metrics.jsonl              every framework's metrics, one file
    summary.json, training.png loss, test accuracy and loss difference from the oracle per step
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from densenet_spec import data as datamod
from densenet_spec import training
from densenet_spec.config import PRESETS, get_preset
from densenet_spec.errors import DenseNetError, ResumeMismatchError, TrainingOptionError
from densenet_spec.frameworks import FRAMEWORKS, VARIANTS, get_framework
from densenet_spec.reference import BN_SYNC

ORACLE = "numpy"  # the oracle acting as a framework (--frameworks numpy)
REFERENCE = "oracle64"  # the float64 oracle run every framework's losses are compared with
DEFAULT_IMAGE_SIZE = {"digits": 32, "fashion-mnist": 96}  # 96: the d2l chapter's run
# Flags that fix the trajectory: given with --resume they must equal the checkpoint's.
TRAJECTORY = (
    "preset",
    "data",
    "image_size",
    "batch",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "dtype",
    "seed",
)
DEFAULTS = {
    "preset": "d2l",
    "data": "digits",
    "batch": 64,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "schedule": "constant",
    "dtype": "float32",
    "seed": 0,
}


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="densenet-train",
        description="Train the DenseNet on real data in several frameworks from the same weights "
        "and batches; write metrics, checkpoints and a plot.",
    )
    names = ",".join(FRAMEWORKS)
    p.add_argument(
        "--frameworks",
        default=names,
        help=f"comma-separated from {names}, numpy (the oracle as a framework); default: all four",
    )
    p.add_argument(
        "--preset",
        help=f"one of {', '.join(PRESETS)} (default d2l); "
        "1 input channel and 10 classes are set from the data",
    )
    p.add_argument("--data", choices=datamod.DATASETS, help="default digits (bundled)")
    p.add_argument("--data-dir", type=Path, help="folder with the Fashion-MNIST idx files")
    p.add_argument("--image-size", type=int, help="default 32 for digits, 96 for fashion-mnist")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, help="stop after this many steps of the run in total")
    p.add_argument("--batch", type=int, help=f"default {DEFAULTS['batch']}")
    p.add_argument("--lr", type=float, help=f"default {DEFAULTS['lr']}")
    p.add_argument("--momentum", type=float, help=f"default {DEFAULTS['momentum']}")
    p.add_argument("--weight-decay", type=float, help=f"default {DEFAULTS['weight_decay']}")
    p.add_argument(
        "--schedule",
        choices=training.SCHEDULES,
        help="learning rate: constant (default), cosine, or step (/10 at 50%% and 75%%)",
    )
    p.add_argument("--dtype", choices=("float32", "float64"), help="default float32")
    p.add_argument("--seed", type=int, help="weights and data order (default 0)")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu", "tpu"))
    p.add_argument("--variant", default="plain", choices=VARIANTS)
    p.add_argument(
        "--reference-steps",
        type=int,
        default=20,
        help="float64 oracle steps to compare losses with (0: none; the oracle is slow)",
    )
    p.add_argument("--out", type=Path, default=Path("train-out"))
    p.add_argument(
        "--resume",
        type=Path,
        metavar="CHECKPOINT",
        help="a checkpoint folder written by any framework (.../checkpoints/epoch-NNN)",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="train data-parallel on R replicas, each framework on its own engine "
        "(docs/data_parallel.md); the batch splits into R equal shards",
    )
    p.add_argument(
        "--bn-sync",
        default="synchronised",
        choices=BN_SYNC,
        help="with --replicas: BatchNorm statistics over the whole batch (the one-device run) or "
        "each replica's own shard",
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
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def parse_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise TrainingOptionError(f"--frameworks: none named in {text!r}")
    for n in names:
        if n != ORACLE:
            get_framework(n)  # UnknownFrameworkError lists the known ones
    return list(dict.fromkeys(names))


def plan(args) -> dict:
    """Validate every flag and load the data before anything runs; named errors otherwise."""
    given = {k: getattr(args, k) for k in TRAJECTORY if getattr(args, k) is not None}
    start = None
    if args.resume is not None:
        start = training.load_checkpoint(args.resume)
        s = start.settings
        have = {**s.to_dict(), "preset": None}
        clash = {k: (v, have[k]) for k, v in given.items() if k != "preset" and v != have[k]}
        if (
            "preset" in given
            and get_preset(given["preset"]).replace(in_channels=1, num_classes=10) != s.config
        ):
            clash["preset"] = (given["preset"], "the checkpoint's config")
        if clash:
            shown = "; ".join(
                f"--{k.replace('_', '-')} {a!r} vs {b!r}" for k, (a, b) in clash.items()
            )
            raise ResumeMismatchError(
                f"{args.resume}: flags differ from the checkpoint's run: {shown}"
            )
    else:
        v = {**DEFAULTS, **given}
        config = get_preset(v["preset"]).replace(in_channels=1, num_classes=10)
        size = v.get("image_size") or DEFAULT_IMAGE_SIZE[v["data"]]
        s = training.TrainSettings(
            config,
            v["data"],
            size,
            v["batch"],
            v["lr"],
            v["momentum"],
            v["weight_decay"],
            v["schedule"],
            0,
            v["dtype"],
            v["seed"],
        )
    if args.epochs < 1:
        raise TrainingOptionError(f"--epochs: must be at least 1, got {args.epochs}")
    if args.steps is not None and args.steps < 1:
        raise TrainingOptionError(f"--steps: must be at least 1, got {args.steps}")
    if args.reference_steps < 0:
        raise TrainingOptionError(f"--reference-steps: must be >= 0, got {args.reference_steps}")
    if args.data_dir is not None and s.data != "fashion-mnist":
        raise TrainingOptionError("--data-dir: only --data fashion-mnist reads files")
    frameworks = parse_names(args.frameworks)
    replicas = check_replicas(args, s, frameworks)
    pythons = check_pythons(args, [n for n in frameworks if n != ORACLE])
    # the schedule's horizon is known only once the data are loaded: checked again below
    training.check_settings(
        training.TrainSettings(**{**vars(s), "schedule_steps": max(s.schedule_steps, 1)})
    )
    raw = datamod.load(s.data, args.data_dir)
    spe = datamod.steps_per_epoch(len(raw.train_labels), s.batch)
    total = args.epochs * spe
    if s.schedule != "constant":
        if start is None:
            s = training.TrainSettings(**{**vars(s), "schedule_steps": total})
        elif s.schedule_steps != total:
            raise ResumeMismatchError(
                f"the checkpoint's {s.schedule} schedule was planned for {s.schedule_steps} steps; "
                f"resume with --epochs {s.schedule_steps // spe}"
            )
    training.check_settings(s)
    end = min(total, args.steps) if args.steps else total
    first = start.step if start else 0
    if start is not None and start.steps_per_epoch != spe:
        raise ResumeMismatchError(
            f"{args.resume}: {start.steps_per_epoch} steps per epoch, data give {spe}"
        )
    if end <= first:
        raise TrainingOptionError(
            f"--epochs/--steps: the run would stop at step {end}, the checkpoint is at step {first}"
        )
    return {
        "settings": s,
        "raw": raw,
        "spe": spe,
        "start": start,
        "first": first,
        "end": end,
        "frameworks": frameworks,
        "pythons": pythons,
        "replicas": replicas,
    }


def check_replicas(args, s: training.TrainSettings, frameworks: list[str]) -> dict | None:
    """--replicas R > 1: the job's replica options (densenet_spec/replicas.py), checked: equal
    shards, and every named framework has a data-parallel engine (frameworks.py)."""
    if args.replicas < 1:
        raise TrainingOptionError(f"--replicas: must be at least 1, got {args.replicas}")
    if args.replicas == 1:
        return None
    if s.batch % args.replicas:
        raise TrainingOptionError(
            f"--replicas {args.replicas}: the batch of {s.batch} must split into equal shards"
        )
    without = [n for n in frameworks if n != ORACLE and not FRAMEWORKS[n].data_parallel]
    if without:
        raise TrainingOptionError(f"--replicas: no data-parallel engine for {', '.join(without)}")
    return {"replicas": args.replicas, "bn_sync": args.bn_sync, "buffers": "broadcast"}


def check_pythons(args, frameworks: list[str]) -> dict[str, str]:
    """--python FRAMEWORK=PATH values, every interpreter named there or by DENSENET_PYTHON_*
    checked before anything runs (densenet_envs.interpreters: a named error otherwise)."""
    import densenet_envs as envs
    from densenet_envs.interpreters import unused_overrides

    pythons = envs.parse_python_args(args.python)
    unused = unused_overrides(pythons, frameworks)
    if unused:
        raise TrainingOptionError(f"--python {', '.join(unused)}: not in --frameworks")
    envs.check_pythons(frameworks, pythons, device=args.device)
    return pythons


def _command(
    name: str, job_dir: Path, setup: bool, log, pythons=None, device: str = "cpu"
) -> tuple[list[str], dict]:
    import densenet_envs as envs

    if name in (ORACLE, REFERENCE):
        return [
            sys.executable,
            "-m",
            "densenet_spec.training",
            "numpy",
            str(job_dir),
        ], envs.worker_env("spec")
    python = envs.python_for(name, pythons, setup=setup, log=log, device=device)
    package = FRAMEWORKS[name].package
    return [str(python), "-m", "densenet_spec.training", package, str(job_dir)], envs.worker_env(
        name
    )


def run_worker(
    name: str, job_dir: Path, setup: bool, on_record, log=print, *, pythons=None, device="cpu"
) -> dict:
    """Run one job, streaming its metrics to on_record; never raises for a worker failure."""
    try:
        cmd, env = _command(name, job_dir, setup, log, pythons, device)
    except Exception as e:
        return {"ok": False, "error": str(e)}
    seen = 0
    with open(job_dir / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        while True:
            done = proc.poll() is not None
            records = training.read_metrics(job_dir)
            for r in records[seen:]:
                on_record(r)
            seen = len(records)
            if done:
                break
            time.sleep(0.25)
    if proc.returncode != 0:
        tail = "\n".join((job_dir / "stderr.txt").read_text().strip().splitlines()[-15:])
        return {"ok": False, "error": f"worker exited {proc.returncode}:\n{tail}"}
    return {"ok": True, **json.loads((job_dir / "result.json").read_text())}


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc, ax_diff) = plt.subplots(1, 3, figsize=(15, 4.2))
    ref = {
        r["step"]: r["loss"]
        for r in runs.get(REFERENCE, {}).get("records", [])
        if r["event"] == "step"
    }
    for name, run in runs.items():
        steps = [r for r in run.get("records", []) if r["event"] == "step"]
        epochs = [
            r for r in run.get("records", []) if r["event"] == "epoch" and "test_accuracy" in r
        ]
        style = {"linestyle": "--", "color": "black"} if name == REFERENCE else {}
        ax_loss.plot(
            [r["step"] + 1 for r in steps], [r["loss"] for r in steps], label=name, **style
        )
        if epochs:
            ax_acc.plot(
                [r["step"] for r in epochs], [r["test_accuracy"] for r in epochs], "o-", label=name
            )
        diff = [(r["step"] + 1, abs(r["loss"] - ref[r["step"]])) for r in steps if r["step"] in ref]
        if name != REFERENCE and diff:
            ax_diff.semilogy(*zip(*[(k, max(d, 1e-17)) for k, d in diff]), label=name)
    ax_loss.set(xlabel="step", ylabel="training loss (batch)", title="loss")
    ax_acc.set(xlabel="step", ylabel="test accuracy", title="test accuracy (each epoch)")
    ax_diff.set(
        xlabel="step", ylabel="|loss - float64 oracle loss|", title="distance from the oracle"
    )
    for ax in (ax_loss, ax_acc, ax_diff):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from densenet_spec import report
    from densenet_spec.params import init_params

    console = report.console()
    try:
        p = plan(args)
    except DenseNetError as e:
        console.print(f"[red]{type(e).__name__}[/red]: {e}")
        return 2
    s, raw, spe, start, first, end = (
        p[k] for k in ("settings", "raw", "spe", "start", "first", "end")
    )
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    pre = datamod.preprocess_for(raw, s.image_size)
    data_file = out / "data.safetensors"
    datamod.save_data(data_file, raw, pre)
    weights = None if start else init_params(s.config, s.seed, s.dtype)
    console.print(
        f"{s.data}: {len(raw.train_labels)} train / {len(raw.test_labels)} test images at "
        f"{s.image_size} px ({datamod.RESIZE_METHOD}); {spe} steps of {s.batch} per epoch; "
        f"steps {first}..{end - 1}, {s.dtype}, lr {s.lr} ({s.schedule})"
    )
    if p["replicas"]:
        r = p["replicas"]
        console.print(f"data-parallel: {r['replicas']} replicas each, BatchNorm {r['bn_sync']}")
    names = list(p["frameworks"])
    ref_end = min(end, first + args.reference_steps)
    jobs = {}
    for name in names:
        jobs[name] = training.write_job(
            out / name,
            settings=s,
            data_file=data_file,
            start=start,
            start_weights=weights,
            end_step=end,
            steps_per_epoch=spe,
            framework=name,
            device=args.device,
            variant=args.variant,
            replicas=p["replicas"],
        )
    if ref_end > first:
        names.append(REFERENCE)
        jobs[REFERENCE] = training.write_job(
            out / REFERENCE,
            settings=s,
            data_file=data_file,
            start=start,
            start_weights=weights,
            end_step=ref_end,
            steps_per_epoch=spe,
            framework=REFERENCE,
            compute_dtype="float64",
            eval_every_epoch=ref_end == end,
            checkpoints=False,
            replicas=p["replicas"],
        )

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    runs: dict[str, dict] = {}
    with Progress(
        TextColumn("{task.description:>9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  {task.fields[ips]} img/s"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        for name in names:
            task = progress.add_task(
                name,
                total=(ref_end if name == REFERENCE else end) - first,
                loss="-",
                acc="-",
                ips="-",
            )
            records: list[dict] = []

            def on_record(r, task=task, records=records):
                records.append(r)
                if r["event"] == "step":
                    progress.update(
                        task, advance=1, loss=f"{r['loss']:.4f}", ips=f"{r['images_per_s']:.0f}"
                    )
                elif r["event"] == "epoch" and "test_accuracy" in r:
                    progress.update(task, acc=f"{r['test_accuracy']:.3f}")

            result = run_worker(
                name,
                jobs[name],
                not args.no_setup,
                on_record,
                progress.console.print,
                pythons=p["pythons"],
                device=args.device,
            )
            result["interpreter"] = interpreter_info(name, p["pythons"], args.device)
            runs[name] = {**result, "records": records}
            if not result["ok"]:
                progress.console.print(f"[red]{name} FAILED[/red]: {result['error']}")

    with open(out / "metrics.jsonl", "w") as f:
        for run in runs.values():
            f.writelines(json.dumps(r) + "\n" for r in run["records"])
    summary = {**summarize(runs, s, args), "replicas": p["replicas"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for name, row in summary["frameworks"].items():
        acc = row.get("test_accuracy")
        console.print(
            f"{name:>9}: {'ok' if row['ok'] else 'FAILED'}  final loss {row.get('final_loss')}  "
            f"test accuracy {acc if acc is None else round(acc, 4)}  "
            f"max |loss - oracle64| {row.get('max_loss_diff')}  {row.get('seconds')} s"
        )
    if not args.no_plot:
        plot(runs, out / "training.png")
        console.print(f"plot: {out / 'training.png'}")
    return 0 if all(r["ok"] for r in runs.values()) else 1


def interpreter_info(name: str, pythons: dict, device: str) -> dict:
    """Which Python ran `name` and where it came from (summary.json)."""
    import platform

    import densenet_envs as envs

    if name in (ORACLE, REFERENCE):
        return {"python": sys.executable, "python_version": platform.python_version()}
    try:
        return envs.describe_python(name, pythons, device=device)
    except DenseNetError as e:
        return {"error": str(e)}


def summarize(runs: dict, s: training.TrainSettings, args) -> dict:
    ref = {
        r["step"]: r["loss"]
        for r in runs.get(REFERENCE, {}).get("records", [])
        if r["event"] == "step"
    }
    rows = {}
    for name, run in runs.items():
        steps = [r for r in run["records"] if r["event"] == "step"]
        epochs = [r for r in run["records"] if r["event"] == "epoch"]
        diffs = [abs(r["loss"] - ref[r["step"]]) for r in steps if r["step"] in ref]
        tested = [r for r in epochs if "test_accuracy" in r]
        rows[name] = {
            "ok": run["ok"],
            "error": run.get("error", ""),
            "steps": len(steps),
            "final_loss": steps[-1]["loss"] if steps else None,
            "test_accuracy": tested[-1]["test_accuracy"] if tested else None,
            "max_loss_diff": max(diffs) if diffs and name != REFERENCE else None,
            "seconds": run.get("seconds"),
            "images_per_s": float(np.median([r["images_per_s"] for r in steps])) if steps else None,
            "checkpoints": [r["checkpoint"] for r in epochs if "checkpoint" in r],
            "info": run.get("info", {}),
            "interpreter": run.get("interpreter"),
        }
    return {
        "settings": s.to_dict(),
        "argv": sys.argv[1:],
        "resume": str(args.resume or ""),
        "frameworks": rows,
    }


if __name__ == "__main__":
    sys.exit(main())
