"""How float32 parity over K SGD steps on real batches degrades with K (issue 18).

    .venvs/spec/bin/python benchmarks/float32_steps/run.py [--steps 1,2,5,10,20] [--out DIR]

For each K: `densenet-parity --data digits --steps K --dtype float32 --quantities step` in every
framework (d2l, 32 px, batch 8, lr 0.05, seed 0), then one table row per K: the widest and median
step bound (derived from the oracle's own float32 run over the same K steps against float64) and
each framework's worst step error against the float64 oracle, and the worst step difference
between two frameworks. Writes DIR/curve.json and
DIR/curve.md (default benchmarks/results/float32-steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARGS = "--preset d2l --data digits --image-size 32 --batch 8 --dtype float32 --quantities step"


def run_k(k: int, frameworks: str, folder: Path) -> dict:
    out = folder / f"k{k}.json"
    cmd = [str(Path(sys.executable).parent / "densenet-parity"), *ARGS.split()]
    cmd += ["--steps", str(k), "--frameworks", frameworks, "--no-setup", "--json", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True, text=True)
    report = json.loads(out.read_text())
    row = {"steps": k, "ok": report["ok"]}
    oracle_pairs = [p for p in report["pairs"] if p["b"] == "oracle"]
    bounds = [c["bound"] for c in oracle_pairs[0]["comparisons"] if c["key"].startswith("step/")]
    row["bound_max"], row["bound_median"] = max(bounds), statistics.median(bounds)
    for p in oracle_pairs:
        steps = [c for c in p["comparisons"] if c["key"].startswith("step/")]
        worst = max(steps, key=lambda c: c["error"])
        row[p["a"]] = {"worst_error": worst["error"], "key": worst["key"], "ok": p["ok"]}
    between = [p for p in report["pairs"] if p["b"] != "oracle"]
    if between:  # framework against framework: how far float32 implementations drift apart
        worst = max(
            (c for p in between for c in p["comparisons"] if c["key"].startswith("step/")),
            key=lambda c: c["error"],
        )
        row["between_frameworks"] = {"worst_error": worst["error"], "key": worst["key"]}
    for name, run in report["frameworks"].items():
        if not run["ok"]:  # did not run: why, in one line
            row[name] = {"error": (run["error"].strip().splitlines() or ["?"])[-1][:200]}
    return row


def markdown(rows: list[dict], frameworks: list[str]) -> str:
    head = "| K | verdict | widest bound | median bound | " + " | ".join(frameworks)
    lines = [head + " | worst pair |", "|" + " --- |" * (5 + len(frameworks))]
    for r in rows:
        cells = [
            f"{r[f]['worst_error']:.1e}" if "worst_error" in r.get(f, {}) else "did not run"
            for f in frameworks
        ]
        verdict = "OK" if r["ok"] else "FAIL"
        lines.append(
            f"| {r['steps']} | {verdict} | {r['bound_max']:.1e} | {r['bound_median']:.1e} | "
            + " | ".join(cells)
            + f" | {r.get('between_frameworks', {}).get('worst_error', float('nan')):.1e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="1,2,5,10,20")
    p.add_argument("--frameworks", default="torch,jax,tf,mx")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/float32-steps")
    args = p.parse_args()
    frameworks = args.frameworks.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for k in (int(s) for s in args.steps.split(",")):
            rows.append(run_k(k, args.frameworks, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    command = f"densenet-parity {ARGS} --steps K --frameworks {args.frameworks}"
    (args.out / "curve.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    (args.out / "curve.md").write_text(f"`{command}`\n\n" + markdown(rows, frameworks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
