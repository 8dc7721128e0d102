"""densenet-bench's reports from hand-made result lines: reruns, pooled rounds, memory vs depth."""

import pytest

from densenet_bench import metrics, plots, report, results
from densenet_spec.config import PRESETS, get_preset


def test_report_keeps_the_latest_rerun_of_each_measurement():
    a = {
        "target": "torch",
        "variant": "eager",
        "preset": "tiny",
        "batch": 2,
        "image_size": 32,
        "mode": "infer",
        "memory_efficient": False,
        "device": "cpu",
        "n": 1,
    }
    b, c = {**a, "mode": "train", "n": 2}, {**a, "n": 3}
    assert [line["n"] for line in results.latest([a, b, c])] == [3, 2]
    huge = {**a, "huge_pages": True, "n": 4}  # another measurement, not a re-run
    rerun = {**a, "huge_pages": False, "n": 5}  # a line without the field ran without huge pages
    assert [line["n"] for line in results.latest([a, huge, rerun])] == [5, 4]
    assert report.row(huge)[1:3] == ["-", "eager +huge pages"]  # no model: a line from before
    assert report.row({**huge, "model": "fast"})[1:3] == ["fast", "eager +huge pages"]


def test_pooled_rounds_are_the_median_of_every_step_and_leave_other_lines_alone():
    base = {
        "target": "jax",
        "variant": "jit",
        "preset": "tiny",
        "batch": 4,
        "image_size": 32,
        "mode": "train",
        "memory_efficient": False,
        "device": "cpu",
        "ok": True,
        "first_call_s": 10.0,
        "rss_peak_mb": 100.0,
        "rss_steady_peak_mb": 90.0,
        "achieved_gflops": 1.0,
        "fraction_of_peak": 0.5,
        "run_id": "a",
        "rounds": 2,
        "config": get_preset("tiny").to_dict(),
        "peak": {"gflops": 100.0},
    }
    r1 = {
        **base,
        "round": 1,
        "times_s": [1.0, 3.0, 5.0],
        "median_s": 3.0,
        "rss_peak_mb": 120.0,
        "cpu_median_s": 2.9,
        "minor_faults_per_step": 10,
    }
    r2 = {
        **base,
        "round": 2,
        "times_s": [2.0, 2.0],
        "median_s": 2.0,
        "first_call_s": 12.0,
        "cpu_median_s": 1.9,
        "minor_faults_per_step": 30,
    }
    other_run = {**r1, "run_id": "b"}
    failed = {**base, "round": 1, "ok": False, "target": "keras-jax"}
    old = {k: v for k, v in r1.items() if k not in ("run_id", "round", "rounds")}  # before --rounds
    pooled, fail, other, plain = results.pool_rounds([r1, failed, r2, other_run, old])
    assert pooled["times_s"] == [1.0, 3.0, 5.0, 2.0, 2.0] and pooled["median_s"] == 2.0
    assert (pooled["min_s"], pooled["max_s"]) == (1.0, 5.0)
    assert pooled["throughput"] == 2.0 and pooled["throughput_min"] == pytest.approx(0.8)
    assert pooled["round_medians_s"] == [3.0, 2.0] and "round" not in pooled
    assert pooled["first_call_s"] == 11.0 and pooled["compile_s"] == 9.0
    assert (pooled["rss_peak_mb"], pooled["rss_steady_peak_mb"]) == (120.0, 90.0)
    assert pooled["cpu_median_s"] == pytest.approx(2.4) and pooled["minor_faults_per_step"] == 20
    # GFLOP/s from the pooled median, not the rounds' stale 1.0
    step_gflop = metrics.step_flops(get_preset("tiny"), 32, 4, "train") / 1e9
    assert pooled["achieved_gflops"] == pytest.approx(step_gflop / 2.0)
    assert pooled["fraction_of_peak"] == pytest.approx(step_gflop / 2.0 / 100.0)
    assert fail is failed and plain is old
    assert other["times_s"] == other_run["times_s"] and other["median_s"] == 3.0  # its own run


def test_linear_fit_recovers_a_line_and_measures_a_bend():
    a, b, worst = report.linear_fit([58, 82, 98, 130], [100 + 2 * x for x in (58, 82, 98, 130)])
    assert (a, b, worst) == pytest.approx((100, 2, 0), abs=1e-9)
    *_, worst = report.linear_fit([1, 2, 3, 4], [1, 4, 9, 16])  # a parabola is not straight
    assert worst > 0.2


def _train_line(preset, memory_efficient, setup, peak, median_s):
    return {
        "ok": True,
        "mode": "train",
        "target": "torch",
        "variant": "eager",
        "batch": 8,
        "image_size": 224,
        "preset": preset,
        "memory_efficient": memory_efficient,
        "config": PRESETS[preset].to_dict(),
        "rss_setup_mb": setup,
        "rss_steady_peak_mb": peak,
        "rss_peak_mb": peak,
        "throughput": 8 / median_s,
        "cpu_median_s": median_s,
    }


def test_depth_table_compares_plain_and_memory_efficient_per_depth(tmp_path):
    lines = [
        _train_line("densenet121", False, 400, 1400, 2.0),
        _train_line("densenet121", True, 400, 900, 2.4),
        _train_line("densenet201", False, 400, 2400, 4.0),
        _train_line("densenet201", True, 400, 1000, 5.0),
    ]
    table = report.depth_markdown(lines)
    assert (
        "| torch/eager | densenet121 | 58 | 1000 | 500 | 50% | 64% | 4.00 | 3.33 | +20% | +20% |"
        in table
    )
    assert (
        "| torch/eager | densenet201 | 98 | 2000 | 600 | 30% | 42% | 2.00 | 1.60 | +25% | +25% |"
        in table
    )
    fast = [{**ln, "model": "fast"} for ln in lines]  # a model variant is a series of its own
    assert "| torch/fast/eager | densenet121 | 58 |" in report.depth_markdown(lines + fast)
    assert "memeff: 2.5 MiB per dense layer" in table  # (600 - 500) / (98 - 58)
    plots.depth_plot(lines, tmp_path / "depth.png")
    assert (tmp_path / "depth.png").read_bytes()[:4] == b"\x89PNG"
