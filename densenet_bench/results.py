"""The JSON-lines result files: reading them, pooling the rounds of a run, keeping the latest rerun.

One line per measurement and round (schema "densenet-bench/2"; "densenet-bench/1" lines, written
before the model variants existed, read the same and have no "model").
"""

from __future__ import annotations

import json
import statistics
from os import PathLike

from densenet_bench.metrics import rates

SCHEMA = "densenet-bench/2"
# What makes two lines the same measurement (a later one is a rerun of it).
KEY = (
    "target",
    "model",
    "variant",
    "preset",
    "batch",
    "image_size",
    "mode",
    "memory_efficient",
    "device",
)


def load(path: str | PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def key(line: dict) -> tuple:
    # lines written before --huge-pages existed have no such field: they ran without it
    return (*(line.get(k) for k in KEY), bool(line.get("huge_pages")))


def pool_rounds(lines: list[dict]) -> list[dict]:
    """One line per measurement of a `--rounds R` run, its timed steps pooled over the rounds.

    Lines of other runs, and failed ones, pass through unchanged."""
    groups: dict[tuple, list[dict]] = {}
    out: list = []
    for ln in lines:
        if ln.get("rounds", 1) > 1 and ln.get("ok"):
            k = (ln["run_id"], key(ln))
            if k not in groups:
                groups[k] = []
                out.append(groups[k])
            groups[k].append(ln)
        else:
            out.append(ln)
    return [_pooled(x) if isinstance(x, list) else x for x in out]


def _pooled(rounds: list[dict]) -> dict:
    times = [t for ln in rounds for t in ln["times_s"]]
    line = dict(rounds[-1])
    line.pop("round")
    line.update(
        times_s=times,
        median_s=statistics.median(times),
        min_s=min(times),
        max_s=max(times),
        first_call_s=statistics.median(ln["first_call_s"] for ln in rounds),
        rss_peak_mb=max(ln["rss_peak_mb"] for ln in rounds),
        round_medians_s=[ln["median_s"] for ln in rounds],
        load_avg_start=rounds[0].get("load_avg_start"),
    )
    for k in ("cpu_median_s", "minor_faults_per_step"):  # per round only: median of those
        values = [ln[k] for ln in rounds if ln.get(k) is not None]
        line[k] = statistics.median(values) if values else None
    steady = [ln.get("rss_steady_peak_mb") for ln in rounds]
    line["rss_steady_peak_mb"] = None if None in steady else max(steady)
    line.update(rates(line))
    return line


def latest(lines: list[dict]) -> list[dict]:
    """The last result of each measurement (a rerun appended later replaces the earlier one),
    in the order the measurements were first made; the rounds of one run pooled."""
    lines = pool_rounds(lines)
    last = {key(ln): ln for ln in lines}
    firsts = dict.fromkeys(key(ln) for ln in lines)
    return [last[k] for k in firsts]
