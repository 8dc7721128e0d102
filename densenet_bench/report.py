"""Tables from densenet-bench's JSON lines: every result, ours against the peers, memory vs depth.

    python -m densenet_bench.report results.jsonl [--markdown table.md] [--plot bench.png]
    python -m densenet_bench.report --ratios before.jsonl after.jsonl

prints the rich table, writes a Markdown table and a PNG with throughput and peak memory per
target (densenet_bench.plots); --ratios prints ours/peer throughput and peak RSS per framework and
model, one block per file. Runs in the spec environment (rich, matplotlib).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from densenet_bench.results import latest, load

COLUMNS = (
    "target",
    "model",
    "variant",
    "preset",
    "batch",
    "size",
    "mode",
    "img/s",
    "min-max",
    "1st call s",
    "RSS MiB",
    "steady MiB",
    "dev MiB",
    "GFLOP/s",
    "% peak",
    "load",
)


def console() -> Console:
    """Wide enough for every column when the output goes to a file or a pipe."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 170)


def label(line: dict) -> str:
    """target/variant, or target/model/variant for ours: "torch/fast/eager"."""
    model = line.get("model")
    return "/".join([line["target"], *([model] if model else []), line["variant"]])


def suffix(line: dict) -> str:
    return (" +memeff" if line.get("memory_efficient") else "") + (
        " +huge pages" if line.get("huge_pages") else ""
    )


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def row(line: dict) -> list[str]:
    """One result as table cells; a failed or skipped one says why in the throughput cell."""
    head = [
        line["target"],
        line.get("model") or "-",
        line["variant"] + suffix(line),
        line["preset"],
        str(line["batch"]),
        str(line["image_size"]),
        line["mode"],
    ]
    if not line.get("ok"):
        return (
            head
            + ["skipped" if line.get("skipped") else "FAILED"]
            + [""] * (len(COLUMNS) - len(head) - 1)
        )
    frac = line.get("fraction_of_peak")
    return head + [
        _num(line["throughput"], ".1f"),
        f"{line['throughput_min']:.1f}-{line['throughput_max']:.1f}",
        _num(line["first_call_s"], ".2f"),
        _num(line.get("rss_peak_mb"), ".0f"),
        _num(line.get("rss_steady_peak_mb"), ".0f"),  # peak after the first (compiling) call
        _num(line.get("device_peak_mb"), ".0f"),
        _num(line.get("achieved_gflops"), ".1f"),
        "-" if frac is None else f"{100 * frac:.0f}%",
        _num((line.get("load_avg_start") or [None])[0], ".1f"),  # 1-minute load at the start
    ]


def problems(lines: list[dict]) -> list[str]:
    """Why each skipped or failed result did not run (the first line of the reason)."""
    out = []
    for ln in lines:
        if not ln.get("ok"):
            why = ln.get("skipped") or ln.get("error") or "failed"
            out.append(f"{label(ln)} {ln['mode']}: {why.splitlines()[0]}")
    return list(dict.fromkeys(out))


def caption(lines: list[dict]) -> str:
    first = next((ln for ln in lines if ln.get("ok")), lines[0] if lines else {})
    peaks = [ln["peak"]["gflops"] for ln in lines if ln.get("peak")]
    peak = first.get("peak") or {}
    cpu, cpus = first.get("cpu", "?"), first.get("usable_cpus", "?")
    parts = [f"{cpu}, {cpus} CPUs, device {first.get('device', '?')}"]
    if peak:
        rate = f"{min(peaks):.1f}" + (f"-{max(peaks):.1f}" if max(peaks) > min(peaks) else "")
        parts.append(f"float32 matmul peak {rate} GFLOP/s ({peak['n']}^2, {peak['blas']})")
    loads = [ln["load_avg_start"][0] for ln in lines if ln.get("load_avg_start")]
    if loads:
        parts.append(f"load average {min(loads):.2f}-{max(loads):.2f} during the runs")
    return "; ".join(parts)


def print_table(lines: list[dict], con: Console) -> None:
    """The rich table of a run, and why each skipped or failed line did not run."""
    table = Table(
        title="densenet-bench: median of the timed iterations (images per second)",
        caption=caption(lines),
    )
    for col in COLUMNS:
        left = col in ("target", "model", "variant", "preset", "mode")
        table.add_column(col, justify="left" if left else "right")
    for line in lines:
        table.add_row(*row(line), style=None if line.get("ok") else "yellow")
    con.print(table)
    for p in problems(lines):
        con.print(f"[yellow]{p}[/]")


def markdown(lines: list[dict]) -> str:
    """The same table in Markdown, with its caption and the reasons for skipped lines."""
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(row(line)) + " |" for line in lines]
    notes = "".join(f"- {p}\n" for p in problems(lines))
    return "\n".join(out) + f"\n\n{caption(lines)}\n" + (f"\n{notes}" if notes else "")


def step_mb(line: dict) -> float:
    """Host memory one training step adds beyond the built model: steady peak minus setup RSS
    (the framework's own footprint and the weights are in the setup RSS)."""
    peak = line.get("rss_steady_peak_mb") or line["rss_peak_mb"]
    return peak - line["rss_setup_mb"]


def depth_series(lines: list[dict], min_depths: int = 2) -> dict[tuple, list[dict]]:
    """Training results by (target, model, variant, batch, size, memory_efficient), ordered by depth
    (dense layers); only series measured at `min_depths` depths or more."""
    series: dict[tuple, dict[int, dict]] = {}
    for ln in lines:
        if ln.get("ok") and ln["mode"] == "train":
            key = (
                ln["target"],
                ln.get("model"),
                ln["variant"],
                ln["batch"],
                ln["image_size"],
                bool(ln.get("memory_efficient")),
            )
            series.setdefault(key, {})[sum(ln["config"]["block_config"])] = ln
    return {k: [v[d] for d in sorted(v)] for k, v in series.items() if len(v) >= min_depths}


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares line y = a + b x; (a, b, largest residual as a fraction of its y)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    return a, b, max(abs(y - (a + b * x)) / abs(y) for x, y in zip(xs, ys))


def series_label(key: tuple) -> str:
    target, model, variant = key[:3]
    return f"{target}/{variant}" if model is None else f"{target}/{model}/{variant}"


def _cpu_slowdown(plain: dict, checkpointed: dict) -> str:
    if not (plain.get("cpu_median_s") and checkpointed.get("cpu_median_s")):
        return "-"
    return f"{checkpointed['cpu_median_s'] / plain['cpu_median_s'] - 1:+.0%}"


def depth_markdown(lines: list[dict]) -> str:
    """Plain against memory-efficient training per depth, and how straight each series is."""
    series = depth_series(lines, min_depths=1)
    out = [
        "| target | preset | dense layers | plain step MiB | memeff step MiB | memeff / plain "
        "| peak RSS memeff / plain | plain img/s | memeff img/s | slowdown | CPU time slowdown |",
        "|" + "---|" * 11,
    ]
    fits = []
    for key, plain in series.items():
        if key[-1]:
            continue
        checkpointed = {
            sum(ln["config"]["block_config"]): ln for ln in series.get(key[:-1] + (True,), [])
        }
        for ln in plain:
            depth = sum(ln["config"]["block_config"])
            me = checkpointed.get(depth)
            cells = [series_label(key), ln["preset"], str(depth), f"{step_mb(ln):.0f}"]
            if me:
                cells += [
                    f"{step_mb(me):.0f}",
                    f"{step_mb(me) / step_mb(ln):.0%}",
                    f"{me['rss_peak_mb'] / ln['rss_peak_mb']:.0%}",
                    f"{ln['throughput']:.2f}",
                    f"{me['throughput']:.2f}",
                    f"{ln['throughput'] / me['throughput'] - 1:+.0%}",
                    _cpu_slowdown(ln, me),
                ]
            else:
                cells += ["-", "-", "-", f"{ln['throughput']:.2f}", "-", "-", "-"]
            out.append("| " + " | ".join(cells) + " |")
    for key, runs in depth_series(lines).items():
        xs = [sum(ln["config"]["block_config"]) for ln in runs]
        a, b, worst = linear_fit(xs, [step_mb(ln) for ln in runs])
        mode = "memeff" if key[-1] else "plain"
        fits.append(
            f"- {series_label(key)} {mode}: {b:.1f} MiB per dense layer, straight line "
            f"within {worst:.1%} over {len(xs)} depths"
        )
    fits = fits or ["- (needs a series measured at two depths or more)"]
    head = "\n\nLinear fit of step memory against dense layers:\n"
    return "\n".join(out) + head + "\n".join(fits) + "\n"


def peer_ratios(lines: list[dict]) -> list[dict]:
    """Ours against the official peer measured in the same file: throughput and peak RSS ratios
    per framework, model and mode (ours over the peer: speed above 1 is faster, RSS below 1 is
    less memory). The peer runs the same execution variant where it has it, else its baseline."""
    ok = [ln for ln in latest(lines) if ln.get("ok")]

    def setting(ln: dict) -> tuple:
        return (
            ln["framework"],
            ln["preset"],
            ln["batch"],
            ln["image_size"],
            ln["mode"],
            bool(ln.get("memory_efficient")),
            bool(ln.get("huge_pages")),
        )

    peers: dict[tuple, list[dict]] = {}
    for ln in ok:
        if ln["implementation"] != "ours":
            peers.setdefault(setting(ln), []).append(ln)
    out = []
    for ln in ok:
        candidates = peers.get(setting(ln), [])
        if ln["implementation"] != "ours" or not candidates:
            continue
        peer = next((p for p in candidates if p["variant"] == ln["variant"]), candidates[0])
        out.append(
            {
                "framework": ln["framework"],
                "ours": label(ln),
                "peer": label(peer),
                "mode": ln["mode"],
                "ours_throughput": ln["throughput"],
                "peer_throughput": peer["throughput"],
                "speed_ratio": ln["throughput"] / peer["throughput"],
                "ours_rss_mb": ln["rss_peak_mb"],
                "peer_rss_mb": peer["rss_peak_mb"],
                "rss_ratio": ln["rss_peak_mb"] / peer["rss_peak_mb"],
            }
        )
    return out


def ratios_markdown(lines: list[dict]) -> str:
    """peer_ratios as a Markdown table."""
    out = [
        "| ours | peer | mode | ours img/s | peer img/s | speed ours/peer | ours peak RSS MiB "
        "| peer peak RSS MiB | RSS ours/peer |",
        "|" + "---|" * 9,
    ]
    for r in peer_ratios(lines):
        out.append(
            f"| {r['ours']} | {r['peer']} | {r['mode']} | {r['ours_throughput']:.2f} "
            f"| {r['peer_throughput']:.2f} | {r['speed_ratio']:.2f} | {r['ours_rss_mb']:.0f} "
            f"| {r['peer_rss_mb']:.0f} | {r['rss_ratio']:.2f} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m densenet_bench.report", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "results", type=Path, nargs="+", help="JSON lines written by densenet-bench --json"
    )
    p.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    p.add_argument("--plot", type=Path, help="write a PNG of throughput and memory here")
    p.add_argument(
        "--depth-markdown",
        type=Path,
        help="write plain vs memory-efficient training memory per depth here",
    )
    p.add_argument("--depth-plot", type=Path, help="write a PNG of training memory vs depth here")
    p.add_argument(
        "--ratios",
        action="store_true",
        help="print ours/peer throughput and peak RSS ratios, one table per file",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="show every line; by default a rerun measurement replaces the earlier one",
    )
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.ratios:
        for path in args.results:
            print(f"{path}:\n\n{ratios_markdown(load(path))}")
        return 0
    lines = [ln for path in args.results for ln in load(path)]
    if not args.all:
        lines = latest(lines)
    print_table(lines, console())
    if args.markdown:
        args.markdown.write_text(markdown(lines))
    if args.depth_markdown:
        args.depth_markdown.write_text(depth_markdown(lines))
    if args.plot or args.depth_plot:
        from densenet_bench import plots  # matplotlib only when a plot is asked for

        if args.plot:
            plots.plot(lines, args.plot)
        if args.depth_plot:
            plots.depth_plot(lines, args.depth_plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
