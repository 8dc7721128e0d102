"""Tables and a plot from densenet-bench's JSON lines.

    python -m benchmarks.report results.jsonl [--markdown table.md] [--plot bench.png]

prints the rich table, writes a Markdown table and a PNG with throughput and peak memory per
target (inference and training side by side). Runs in the spec environment (rich, matplotlib).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import textwrap
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks import flops
from densenet_spec.config import DenseNetConfig

COLUMNS = ("target", "variant", "preset", "batch", "size", "mode", "img/s", "min-max",
           "1st call s", "RSS MiB", "steady MiB", "dev MiB", "GFLOP/s", "% peak", "load")


def console() -> Console:
    """Wide enough for every column when the output goes to a file or a pipe."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def load(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


KEY = ("target", "variant", "preset", "batch", "image_size", "mode", "memory_efficient", "device")


def _key(line: dict) -> tuple:
    # results written before --huge-pages existed have no such field: they ran without it
    return (*(line.get(k) for k in KEY), bool(line.get("huge_pages")))


def pool_rounds(lines: list[dict]) -> list[dict]:
    """One line per measurement of a `--rounds R` run, its timed steps pooled over the rounds.

    Lines of other runs, and failed ones, pass through unchanged."""
    groups: dict[tuple, list[dict]] = {}
    out: list = []
    for ln in lines:
        if ln.get("rounds", 1) > 1 and ln.get("ok"):
            key = (ln["run_id"], _key(ln))
            if key not in groups:
                groups[key] = []
                out.append(groups[key])
            groups[key].append(ln)
        else:
            out.append(ln)
    return [_pooled(x) if isinstance(x, list) else x for x in out]


def rates(line: dict) -> dict:
    """What a measured line's step times mean: images per second (median, from the slowest and
    the fastest step), compile time beyond a step, achieved GFLOP/s and fraction of the peak."""
    median, batch = line["median_s"], line["batch"]
    config = DenseNetConfig.from_dict(line["config"])
    gflops = flops.step_flops(config, line["image_size"], batch, line["mode"]) / median / 1e9
    peak = line.get("peak")
    return {
        "throughput": batch / median,
        "throughput_min": batch / line["max_s"],
        "throughput_max": batch / line["min_s"],
        "compile_s": max(line["first_call_s"] - median, 0.0),  # first call beyond a step
        "achieved_gflops": gflops,
        "fraction_of_peak": gflops / peak["gflops"] if peak else None,
    }


def _pooled(rounds: list[dict]) -> dict:
    times = [t for ln in rounds for t in ln["times_s"]]
    line = dict(rounds[-1])
    line.pop("round")
    line.update(
        times_s=times, median_s=statistics.median(times), min_s=min(times), max_s=max(times),
        first_call_s=statistics.median(ln["first_call_s"] for ln in rounds),
        rss_peak_mb=max(ln["rss_peak_mb"] for ln in rounds),
        round_medians_s=[ln["median_s"] for ln in rounds],
        load_avg_start=rounds[0].get("load_avg_start"),
    )
    for key in ("cpu_median_s", "minor_faults_per_step"):  # per round only: median of those
        values = [ln[key] for ln in rounds if ln.get(key) is not None]
        line[key] = statistics.median(values) if values else None
    steady = [ln.get("rss_steady_peak_mb") for ln in rounds]
    line["rss_steady_peak_mb"] = None if None in steady else max(steady)
    line.update(rates(line))
    return line


def latest(lines: list[dict]) -> list[dict]:
    """The last result of each measurement (a re-run appended later replaces the earlier one),
    in the order the measurements were first made; the rounds of one run pooled."""
    lines = pool_rounds(lines)
    last = {_key(ln): ln for ln in lines}
    firsts = dict.fromkeys(_key(ln) for ln in lines)
    return [last[k] for k in firsts]


def _suffix(line: dict) -> str:
    return (" +memeff" if line.get("memory_efficient") else "") + (
        " +huge pages" if line.get("huge_pages") else ""
    )


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def row(line: dict) -> list[str]:
    """One result as table cells; a failed or skipped one says why in the throughput cell."""
    head = [line["target"], line["variant"] + _suffix(line),
            line["preset"], str(line["batch"]), str(line["image_size"]), line["mode"]]
    if not line.get("ok"):
        return head + ["skipped" if line.get("skipped") else "FAILED"] + [""] * (
            len(COLUMNS) - len(head) - 1
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
            out.append(f"{ln['target']}/{ln['variant']} {ln['mode']}: {why.splitlines()[0]}")
    return list(dict.fromkeys(out))


def _caption(lines: list[dict]) -> str:
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
    table = Table(title="densenet-bench: median of the timed iterations (images per second)",
                  caption=_caption(lines))
    for col in COLUMNS:
        left = col in ("target", "variant", "preset", "mode")
        table.add_column(col, justify="left" if left else "right")
    for line in lines:
        table.add_row(*row(line), style=None if line.get("ok") else "yellow")
    con.print(table)
    for p in problems(lines):
        con.print(f"[yellow]{p}[/]")


def markdown(lines: list[dict]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(row(line)) + " |" for line in lines]
    notes = "".join(f"- {p}\n" for p in problems(lines))
    return "\n".join(out) + f"\n\n{_caption(lines)}\n" + (f"\n{notes}" if notes else "")


def _label(line: dict, vary: set[str]) -> str:
    label = f"{line['target']}/{line['variant']}" + _suffix(line).replace(" ", "")
    for key in ("preset", "batch", "image_size"):
        if key in vary:
            label += f" {line[key]}"
    return label


def plot(lines: list[dict], path) -> None:
    """Throughput (top) and peak host memory (bottom) per target, inference beside training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [ln for ln in lines if ln.get("ok")]
    vary = {k for k in ("preset", "batch", "image_size") if len({ln[k] for ln in ok}) > 1}
    labels = list(dict.fromkeys(_label(ln, vary) for ln in ok))
    modes = [m for m in ("infer", "train") if any(ln["mode"] == m for ln in ok)]
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.9 * len(labels) + 2), 7), sharex=True)
    width = 0.8 / max(len(modes), 1)
    for j, mode in enumerate(modes):
        by_label = {_label(ln, vary): ln for ln in ok if ln["mode"] == mode}
        xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(labels))]
        for ax, key in zip(axes, ("throughput", "rss_peak_mb")):
            values = [by_label[lb][key] if lb in by_label else 0 for lb in labels]
            ax.bar(xs, values, width, label=mode)
        low = [by_label[lb]["throughput"] - by_label[lb]["throughput_min"] if lb in by_label else 0
               for lb in labels]
        high = [by_label[lb]["throughput_max"] - by_label[lb]["throughput"] if lb in by_label else 0
                for lb in labels]
        axes[0].errorbar(xs, [by_label[lb]["throughput"] if lb in by_label else 0 for lb in labels],
                         yerr=[low, high], fmt="none", ecolor="black", capsize=2, lw=0.8)
    axes[0].set_ylabel("images / s (median, min-max)")
    axes[1].set_ylabel("peak host RSS (MiB)")
    axes[0].legend()
    axes[1].set_xticks(range(len(labels)))
    axes[1].set_xticklabels(labels, rotation=35, ha="right")
    title = "DenseNet throughput and memory"
    if ok and "preset" not in vary:
        title += f": {ok[0]['preset']}, batch {ok[0]['batch']}, {ok[0]['image_size']}px"
    axes[0].set_title(title)
    fig.text(0.01, 0.005, textwrap.fill(_caption(lines), 110), fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _step_mb(line: dict) -> float:
    """Host memory one training step adds beyond the built model: steady peak minus setup RSS
    (the framework's own footprint and the weights are in the setup RSS)."""
    peak = line.get("rss_steady_peak_mb") or line["rss_peak_mb"]
    return peak - line["rss_setup_mb"]


def depth_series(lines: list[dict], min_depths: int = 2) -> dict[tuple, list[dict]]:
    """Training results by (target, variant, batch, size, memory_efficient), ordered by depth
    (dense layers); only series measured at `min_depths` depths or more."""
    series: dict[tuple, dict[int, dict]] = {}
    for ln in lines:
        if ln.get("ok") and ln["mode"] == "train":
            key = (ln["target"], ln["variant"], ln["batch"], ln["image_size"],
                   bool(ln.get("memory_efficient")))
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


def _cpu_slowdown(plain: dict, checkpointed: dict) -> str:
    if not (plain.get("cpu_median_s") and checkpointed.get("cpu_median_s")):
        return "-"
    return f"{checkpointed['cpu_median_s'] / plain['cpu_median_s'] - 1:+.0%}"


def depth_markdown(lines: list[dict]) -> str:
    """Plain against memory-efficient training per depth, and how straight each series is."""
    series = depth_series(lines, min_depths=1)
    out = ["| target | preset | dense layers | plain step MiB | memeff step MiB | memeff / plain "
           "| peak RSS memeff / plain | plain img/s | memeff img/s | slowdown | CPU time slowdown |",
           "|" + "---|" * 11]
    fits = []
    for key, plain in series.items():
        if key[4]:
            continue
        checkpointed = {sum(ln["config"]["block_config"]): ln
                        for ln in series.get(key[:4] + (True,), [])}
        for ln in plain:
            depth = sum(ln["config"]["block_config"])
            me = checkpointed.get(depth)
            cells = [f"{key[0]}/{key[1]}", ln["preset"], str(depth), f"{_step_mb(ln):.0f}"]
            if me:
                cells += [f"{_step_mb(me):.0f}", f"{_step_mb(me) / _step_mb(ln):.0%}",
                          f"{me['rss_peak_mb'] / ln['rss_peak_mb']:.0%}", f"{ln['throughput']:.2f}", f"{me['throughput']:.2f}",
                          f"{ln['throughput'] / me['throughput'] - 1:+.0%}", _cpu_slowdown(ln, me)]
            else:
                cells += ["-", "-", "-", f"{ln['throughput']:.2f}", "-", "-", "-"]
            out.append("| " + " | ".join(cells) + " |")
    for key, runs in depth_series(lines).items():
        xs = [sum(ln["config"]["block_config"]) for ln in runs]
        a, b, worst = linear_fit(xs, [_step_mb(ln) for ln in runs])
        mode = "memeff" if key[4] else "plain"
        fits.append(f"- {key[0]}/{key[1]} {mode}: {b:.1f} MiB per dense layer, straight line "
                    f"within {worst:.1%} over {len(xs)} depths")
    fits = fits or ["- (needs a series measured at two depths or more)"]
    head = "\n\nLinear fit of step memory against dense layers:\n"
    return "\n".join(out) + head + "\n".join(fits) + "\n"


def depth_plot(lines: list[dict], path) -> None:
    """Step memory (steady peak RSS minus setup) against dense layers, plain and checkpointed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (target, variant, batch, size, me), runs in depth_series(lines).items():
        xs = [sum(ln["config"]["block_config"]) for ln in runs]
        ax.plot(xs, [_step_mb(ln) for ln in runs], "o--" if me else "o-",
                label=f"{target}/{variant}" + (" memory-efficient" if me else ""))
        for x, ln in zip(xs, runs):
            if not me:
                ax.annotate(ln["preset"].replace("densenet", ""), (x, _step_mb(ln)), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("dense layers (sum of block_config)")
    ax.set_ylabel("train step memory, MiB (steady peak RSS - setup)")
    ax.set_title("Training memory against depth")
    ax.legend(fontsize=7)
    fig.text(0.01, 0.005, textwrap.fill(_caption(lines), 110), fontsize=6)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.report", description=__doc__.split("\n")[0]
    )
    p.add_argument("results", type=Path, help="JSON lines written by densenet-bench --json")
    p.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    p.add_argument("--plot", type=Path, help="write a PNG of throughput and memory here")
    p.add_argument("--depth-markdown", type=Path,
                   help="write plain vs memory-efficient training memory per depth here")
    p.add_argument("--depth-plot", type=Path, help="write a PNG of training memory vs depth here")
    p.add_argument("--all", action="store_true",
                   help="show every line; by default a re-run measurement replaces the earlier one")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    lines = load(args.results)
    if not args.all:
        lines = latest(lines)
    print_table(lines, console())
    if args.markdown:
        args.markdown.write_text(markdown(lines))
    if args.plot:
        plot(lines, args.plot)
    if args.depth_markdown:
        args.depth_markdown.write_text(depth_markdown(lines))
    if args.depth_plot:
        depth_plot(lines, args.depth_plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
