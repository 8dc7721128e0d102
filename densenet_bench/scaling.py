"""densenet-bench --replicas 1,2: data-parallel training throughput per framework (issue 20).

Each measurement is a short densenet-train job (densenet_spec.training: the same loop, data
and engine as `densenet-train --replicas R`) on the bundled digits at the requested image
size, float32, synchronised BatchNorm by default: the first step (compilation, process start)
and `warmup` more are dropped, and the median of the timed steps' images per second is the
result. Every replica count of a framework runs in the same invocation, so the speedup is
against the same run's single-replica baseline. On a machine with fewer cores than replicas it
shows the mechanism (the engine's collectives) rather than a speedup.
"""

from __future__ import annotations

import datetime
import json
import statistics
import tempfile
from pathlib import Path

from densenet_bench.plan import BENCH_PRESETS, csv, default_size, ints
from densenet_spec import data as datamod
from densenet_spec import training
from densenet_spec.errors import UsageError
from densenet_spec.frameworks import FRAMEWORKS

SCHEMA = "densenet-bench-scaling/1"


def parse_replicas(text: str) -> list[int]:
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"--replicas {text!r}: comma-separated replica counts") from None
    if not counts or any(c < 1 for c in counts):
        raise UsageError(f"--replicas {text!r}: counts must be >= 1")
    return sorted(set(counts))


def check(frameworks: list[str], counts: list[int], batches: list[int]) -> None:
    """UsageError for a framework without a data-parallel engine or a batch that does not split
    into equal shards, before anything runs."""
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown:
        raise UsageError(f"--replicas measures our frameworks only, not {', '.join(unknown)}")
    without = [f for f in frameworks if not FRAMEWORKS[f].data_parallel]
    if without:
        raise UsageError(f"--replicas: no data-parallel engine for {', '.join(without)}")
    bad = [(b, r) for b in batches for r in counts if b % r]
    if bad:
        raise UsageError(f"--replicas: batch {bad[0][0]} does not split into {bad[0][1]} shards")


def measure(
    framework: str,
    preset: str,
    batch: int,
    image_size: int,
    replicas: int,
    *,
    bn_sync: str,
    steps: int,
    warmup: int,
    seed: int,
    setup: bool,
    log,
    pythons: dict | None = None,
    device: str = "cpu",
) -> dict:
    """One framework at one replica count: the median images/s of the timed steps."""
    from densenet_spec.train_cli import run_worker

    config = BENCH_PRESETS[preset].replace(in_channels=1, num_classes=10)
    settings = training.TrainSettings(
        config, "digits", image_size, batch, 0.05, 0.9, 1e-4, "constant", 0, "float32", seed
    )
    raw = datamod.load("digits")
    spe = datamod.steps_per_epoch(len(raw.train_labels), batch)
    total = 1 + warmup + steps
    if total > spe:
        raise UsageError(f"--iters + --warmup + 1 = {total} steps: more than one epoch ({spe})")
    from densenet_spec.params import init_params

    options = {"replicas": replicas, "bn_sync": bn_sync, "buffers": "broadcast"}
    with tempfile.TemporaryDirectory(prefix="densenet-bench-replicas-") as tmp:
        data_file = Path(tmp) / "data.safetensors"
        datamod.save_data(data_file, raw, datamod.preprocess_for(raw, image_size))
        job = training.write_job(
            Path(tmp) / "job",
            settings=settings,
            data_file=data_file,
            start=None,
            start_weights=init_params(config, seed, "float32"),
            end_step=total,
            steps_per_epoch=spe,
            framework=framework,
            device=device,
            eval_every_epoch=False,
            checkpoints=False,
            replicas=options if replicas > 1 else None,
        )
        result = run_worker(
            framework, job, setup, lambda r: None, log, pythons=pythons, device=device
        )
        if not result["ok"]:
            return {"ok": False, "error": result["error"]}
        records = [r for r in training.read_metrics(job) if r["event"] == "step"]
    timed = [r["images_per_s"] for r in records[1 + warmup :]]
    return {
        "ok": True,
        "images_per_s": statistics.median(timed),
        "timed_steps": len(timed),
        "first_step_s": records[0]["seconds"],
        "info": result.get("info", {}),
    }


def run_scaling(args, console, command: str) -> list[dict]:
    """Every framework x preset x batch x size at every replica count; one line each, with the
    speedup against the same run's smallest replica count."""
    frameworks, presets = csv(args.frameworks), csv(args.preset)
    unknown = [p for p in presets if p not in BENCH_PRESETS]
    if unknown:
        raise UsageError(f"unknown preset {unknown[0]!r}; known: {', '.join(BENCH_PRESETS)}")
    batches = ints(args.batch, "--batch")
    counts = parse_replicas(args.replicas)
    check(frameworks, counts, batches)
    given = ints(args.image_size, "--image-size") if args.image_size else None
    lines = []
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for fw in frameworks:
        for preset in presets:
            for batch in batches:
                for size in given or [default_size(BENCH_PRESETS[preset])]:
                    base = None
                    for r in counts:
                        console.print(f"[dim]{fw} {preset} batch {batch} {size}px x{r}[/]")
                        answer = measure(
                            fw, preset, batch, size, r, bn_sync=args.bn_sync, steps=args.iters,
                            warmup=args.warmup, seed=args.seed, setup=not args.no_setup,
                            log=lambda m: console.print(f"[dim]{m}[/]"),
                            pythons=getattr(args, "pythons", None), device=args.device,
                        )  # fmt: skip
                        line = {
                            "schema": SCHEMA,
                            "timestamp": stamp,
                            "command": command,
                            "framework": fw,
                            "engine": FRAMEWORKS[fw].data_parallel,
                            "preset": preset,
                            "batch": batch,
                            "image_size": size,
                            "replicas": r,
                            "bn_sync": args.bn_sync,
                            "mode": "train",
                            **answer,
                        }
                        if answer["ok"]:
                            base = base or answer["images_per_s"]
                            line["speedup"] = answer["images_per_s"] / base
                        lines.append(line)
                        if args.json:
                            args.json.parent.mkdir(parents=True, exist_ok=True)
                            with open(args.json, "a") as f:
                                f.write(json.dumps(line) + "\n")
    print_table(lines, console)
    return lines


def print_table(lines: list[dict], console) -> None:
    from rich.table import Table

    table = Table(title="data-parallel training throughput (median of the timed steps)")
    for col in ("framework", "preset", "batch", "px", "replicas", "images/s", "speedup"):
        table.add_column(col, justify="left" if col in ("framework", "preset") else "right")
    for x in lines:
        ok = x["ok"]
        table.add_row(
            x["framework"], x["preset"], str(x["batch"]), str(x["image_size"]), str(x["replicas"]),
            f"{x['images_per_s']:.1f}" if ok else "[red]failed[/]",
            f"{x['speedup']:.2f}x" if ok else x["error"].splitlines()[-1][:60],
        )  # fmt: skip
    console.print(table)
