"""Plots from densenet-bench's JSON lines: throughput and memory per target, memory against depth.

Written by `python -m densenet_bench.report --plot / --depth-plot` (matplotlib, spec environment).
"""

from __future__ import annotations

import textwrap
from os import PathLike

from densenet_bench import report


def _label(line: dict, vary: set[str]) -> str:
    label = report.label(line) + report.suffix(line).replace(" ", "")
    for key in ("preset", "batch", "image_size"):
        if key in vary:
            label += f" {line[key]}"
    return label


def plot(lines: list[dict], path: str | PathLike) -> None:
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
        low = [
            by_label[lb]["throughput"] - by_label[lb]["throughput_min"] if lb in by_label else 0
            for lb in labels
        ]
        high = [
            by_label[lb]["throughput_max"] - by_label[lb]["throughput"] if lb in by_label else 0
            for lb in labels
        ]
        axes[0].errorbar(
            xs,
            [by_label[lb]["throughput"] if lb in by_label else 0 for lb in labels],
            yerr=[low, high],
            fmt="none",
            ecolor="black",
            capsize=2,
            lw=0.8,
        )
    axes[0].set_ylabel("images / s (median, min-max)")
    axes[1].set_ylabel("peak host RSS (MiB)")
    axes[0].legend()
    axes[1].set_xticks(range(len(labels)))
    axes[1].set_xticklabels(labels, rotation=35, ha="right")
    title = "DenseNet throughput and memory"
    if ok and "preset" not in vary:
        title += f": {ok[0]['preset']}, batch {ok[0]['batch']}, {ok[0]['image_size']}px"
    axes[0].set_title(title)
    fig.text(0.01, 0.005, textwrap.fill(report.caption(lines), 110), fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def depth_plot(lines: list[dict], path: str | PathLike) -> None:
    """Step memory (steady peak RSS minus setup) against dense layers, plain and checkpointed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, runs in report.depth_series(lines).items():
        me = key[-1]
        xs = [sum(ln["config"]["block_config"]) for ln in runs]
        ax.plot(
            xs,
            [report.step_mb(ln) for ln in runs],
            "o--" if me else "o-",
            label=report.series_label(key) + (" memory-efficient" if me else ""),
        )
        for x, ln in zip(xs, runs):
            if not me:
                ax.annotate(
                    ln["preset"].replace("densenet", ""),
                    (x, report.step_mb(ln)),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(3, 3),
                )
    ax.set_xlabel("dense layers (sum of block_config)")
    ax.set_ylabel("train step memory, MiB (steady peak RSS - setup)")
    ax.set_title("Training memory against depth")
    ax.legend(fontsize=7)
    fig.text(0.01, 0.005, textwrap.fill(report.caption(lines), 110), fontsize=6)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
