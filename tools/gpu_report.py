"""Summarise a tools/gpu_check.sh output folder: README.md for people, summary.json for programs.

    python tools/gpu_report.py OUT

Standard library only (the GPU machine's python3 may lack everything else). Reads the parity
JSON files (densenet-parity --json), bench.jsonl (densenet-bench --json), versions.json and
device.csv. Exit 0 when every parity run with TF32 off passed, else 1; TF32-default runs and
benchmarks are reported, never failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def worst_by_family(report: dict) -> dict:
    """{pair: {family: (worst error / bound, error, bound, key)}} of one parity report."""
    out: dict = {}
    for p in report.get("pairs", []):
        fams = out.setdefault(f"{p['a']} vs {p['b']}", {})
        for c in p["comparisons"]:
            fam = c["key"].split("/", 1)[0]
            ratio = c["error"] / c["bound"] if c["bound"] else float("inf")
            if fam not in fams or ratio > fams[fam][0]:
                fams[fam] = (ratio, c["error"], c["bound"], c["key"])
    return out


def parity_rows(out: Path) -> list[dict]:
    rows = []
    for path in sorted(out.glob("parity-*.json")):
        name = path.stem
        report = json.loads(path.read_text())
        rc = (out / f"{name}.rc").read_text().split() if (out / f"{name}.rc").exists() else []
        rows.append(
            {
                "run": name,
                "tf32": "default" if name.endswith("-tf32") else "off",
                "ok": report["ok"],
                "exit": int(rc[0]) if rc else None,
                "seconds": int(rc[1]) if len(rc) > 1 else None,
                "frameworks": {
                    fw: {"ok": r["ok"], "error": r["error"][-600:], "info": r.get("info", {})}
                    for fw, r in report["frameworks"].items()
                },
                "worst": {
                    pair: {
                        f: {"error": e, "bound": b, "key": k} for f, (_, e, b, k) in fams.items()
                    }
                    for pair, fams in worst_by_family(report).items()
                },
            }
        )
    for path in sorted(out.glob("parity-*.rc")):  # runs that wrote no JSON (crash, timeout)
        if not (out / f"{path.stem}.json").exists():
            code, seconds = path.read_text().split()
            rows.append(
                {
                    "run": path.stem,
                    "tf32": "default" if path.stem.endswith("-tf32") else "off",
                    "ok": False,
                    "exit": int(code),
                    "seconds": int(seconds),
                    "frameworks": {},
                    "worst": {},
                    "error": f"no JSON written; see {path.stem}.log",
                }  # fmt: skip
            )
    return rows


def tf32_moves(rows: list[dict]) -> list[dict]:
    """How far TF32 at the framework default moves each float32 result: the worst error
    against the oracle with TF32 off and at default, per framework and quantity family."""
    by_run = {r["run"]: r for r in rows}
    moves = []
    for r in rows:
        if r["tf32"] != "default":
            continue
        off = by_run.get(r["run"].removesuffix("-tf32"))
        if off is None:
            continue
        for pair, fams in r["worst"].items():
            if not pair.endswith("vs oracle"):
                continue
            for fam, w in fams.items():
                base = off["worst"].get(pair, {}).get(fam)
                moves.append(
                    {
                        "run": off["run"],
                        "framework": pair.split(" vs ")[0],
                        "quantity": fam,
                        "error_tf32_off": base["error"] if base else None,
                        "error_tf32_default": w["error"],
                        "bound": w["bound"],
                        "factor": w["error"] / base["error"] if base and base["error"] else None,
                    }
                )
    return moves


def bench_rows(out: Path) -> list[dict]:
    path = out / "bench.jsonl"
    if not path.exists():
        return []
    keep = ("target", "model", "mode", "batch", "image_size", "ok", "throughput", "median_s",
            "compile_s", "device_peak_mb", "error", "skipped")  # fmt: skip
    rows = []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        rows.append({k: d.get(k) for k in keep})
    return rows


def fmt(v, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def markdown(summary: dict) -> str:
    lines = ["# GPU check", ""]
    dev = summary.get("device", "").strip().splitlines()
    if dev:
        lines += ["Device: " + (dev[1] if len(dev) > 1 else dev[0]), ""]
    v = summary.get("versions", {})
    if v:
        shown = ", ".join(f"{k} {v[k]}" for k in v if v[k] and not k.endswith("devices"))
        lines += [f"Versions: {shown}", ""]
    lines += ["## Parity on the GPU against the CPU NumPy oracle", ""]
    lines += ["| run | TF32 | result | s | pair | family | worst error | bound |", "|---" * 8 + "|"]
    for r in summary["parity"]:
        first = True
        for pair, fams in r["worst"].items():
            for fam, w in fams.items():
                head = (
                    [r["run"], r["tf32"], "pass" if r["ok"] else "FAIL", fmt(r["seconds"])]
                    if first
                    else ["", "", "", ""]
                )
                first = False
                lines.append(
                    "| " + " | ".join(head + [pair, fam, fmt(w["error"]), fmt(w["bound"])]) + " |"
                )
        if first:
            lines.append(
                f"| {r['run']} | {r['tf32']} | FAIL | {fmt(r['seconds'])} | - | - | - | - |"
            )
        for fw, f in r["frameworks"].items():
            if not f["ok"]:
                lines += ["", f"{r['run']}: {fw} did not run:", "```", f["error"], "```", ""]
    if summary["tf32"]:
        lines += ["", "## TF32 at the framework default (documented, not a failure)", ""]
        lines += ["| run | framework | family | TF32 off | TF32 default | x | float32 bound |"]
        lines += ["|---" * 7 + "|"]
        for m in summary["tf32"]:
            lines.append(
                f"| {m['run']} | {m['framework']} | {m['quantity']} | {fmt(m['error_tf32_off'])} "
                f"| {fmt(m['error_tf32_default'])} | {fmt(m['factor'], '.3g')} "
                f"| {fmt(m['bound'])} |"
            )
    lines += ["", "## Benchmarks (batch 64, 224 px, float32)", ""]
    lines += ["| target | mode | images/s | median step s | compile s | device peak MiB | note |"]
    lines += ["|---" * 7 + "|"]
    for b in summary["bench"]:
        note = str(b.get("error") or b.get("skipped") or "")
        note = note.splitlines()[0][:80] if note else ""
        lines.append(
            f"| {b['target']} | {b['mode']} | {fmt(b['throughput'], '.1f')} "
            f"| {fmt(b['median_s'], '.4f')} | {fmt(b['compile_s'], '.1f')} "
            f"| {fmt(b['device_peak_mb'], '.0f')} | {note} |"
        )
    if summary["skipped"]:
        lines += ["", "Skipped: " + "; ".join(summary["skipped"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "gpu-check")
    rows = parity_rows(out)
    summary = {
        "device": (out / "device.csv").read_text() if (out / "device.csv").exists() else "",
        "versions": json.loads((out / "versions.json").read_text() or "{}")
        if (out / "versions.json").exists()
        else {},
        "parity": rows,
        "tf32": tf32_moves(rows),
        "bench": bench_rows(out),
        "skipped": [f"{p.stem}: {p.read_text().strip()}" for p in sorted(out.glob("*.skipped"))],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "README.md").write_text(markdown(summary))
    strict = [r for r in rows if r["tf32"] == "off"]
    ok = bool(strict) and all(r["ok"] for r in strict)
    print(f"parity (TF32 off): {sum(r['ok'] for r in strict)}/{len(strict)} passed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
