"""densenet-bench: the FLOP count against an independent count, the run plan, and one tiny
end-to-end run of the CLI for torch (skipped without .venvs/torch). Timings are never asserted."""

import json
import subprocess
import sys

import pytest

from benchmarks import cli, flops, report
import densenet_envs as envs
from densenet_spec.config import PRESETS, get_preset
from densenet_spec.errors import DenseNetError


def densenet121_macs_by_hand(size: int = 224) -> int:
    """DenseNet-121 (paper, Table 1) written out layer by layer, nothing from densenet_spec."""
    macs = 64 * 3 * 7 * 7 * (size // 2) ** 2  # stem conv 7x7/2
    side, channels = size // 4, 64  # after the 3x3/2 max-pool
    for i, layers in enumerate((6, 12, 24, 16)):
        for _ in range(layers):
            macs += 128 * channels * side**2  # 1x1 conv to 4k = 128
            macs += 32 * 128 * 9 * side**2  # 3x3 conv to k = 32
            channels += 32
        if i < 3:
            macs += (channels // 2) * channels * side**2  # transition 1x1 conv, theta 0.5
            channels //= 2
            side //= 2
    return macs + 1000 * 1024  # classifier


def test_densenet121_forward_is_torchvisions_2_83_gmac():
    by_hand = densenet121_macs_by_hand()
    assert flops.forward_macs(PRESETS["densenet121"], 224) == by_hand
    assert by_hand == pytest.approx(2.83e9, rel=0.01)  # torchvision's published "GFLOPS"


def test_densenet121_forward_with_bn_relu_pool_is_2_87_g():
    # profilers (ptflops) add one op per element for each BN, ReLU and pooling input
    assert flops.forward_ops(PRESETS["densenet121"], 224) == pytest.approx(2.87e9, rel=0.01)


@pytest.mark.parametrize("name, gmac", [("densenet161", 7.73), ("densenet169", 3.36),
                                        ("densenet201", 4.29)])
def test_other_imagenet_presets_match_torchvisions_published_cost(name, gmac):
    assert flops.forward_macs(PRESETS[name], 224) == pytest.approx(gmac * 1e9, rel=0.01)


def test_a_train_step_counts_three_forwards():
    c = PRESETS["tiny"]
    assert flops.step_flops(c, 32, 4, "train") == 3 * flops.step_flops(c, 32, 4, "infer")
    assert flops.step_flops(c, 32, 4, "infer") == 2 * 4 * flops.forward_macs(c, 32)


def _plan(argv):
    return cli.plan(cli.parse_args(argv))


def test_plan_measures_each_baseline_and_only_the_fast_paths_asked_for():
    runs, _ = _plan(["--frameworks", "torch,jax", "--fast", "compile", "--mode", "train"])
    assert [(t.name, r.variant, r.mode) for t, _, r in runs] == [
        ("torch", "eager", "train"), ("torch", "compile", "train"), ("jax", "jit", "train")
    ]
    runs, _ = _plan(["--frameworks", "mx", "--fast", "all", "--batch", "1,8"])
    assert {(r.variant, r.batch) for _, _, r in runs} == {
        (v, b) for v in ("imperative", "hybridize") for b in (1, 8)
    }


def test_plan_puts_each_peer_after_ours_and_skips_what_peers_lack():
    runs, notes = _plan(["--peers", "--preset", "densenet161", "--mode", "infer"])
    assert [t.name for t, _, _ in runs] == ["torch", "torchvision", "jax", "tf", "mx", "gluon"]
    assert any("keras-jax" in n for n in notes) and any("keras-tf" in n for n in notes)
    runs, notes = _plan(
        ["--peers", "--preset", "tiny", "--frameworks", "torch", "--memory-efficient"]
    )
    assert [t.name for t, _, _ in runs] == ["torch", "torch"]
    assert all(r.memory_efficient for _, _, r in runs)


def test_plan_measures_plain_and_memory_efficient_side_by_side_where_asked():
    runs, notes = _plan(["--frameworks", "torch,mx", "--peers", "--memory-efficient", "both",
                         "--mode", "train", "--preset", "densenet201,densenet264"])
    got = [(t.name, r.preset, r.memory_efficient) for t, _, r in runs]
    assert got == [
        ("torch", "densenet201", False), ("torch", "densenet201", True),
        ("torch", "densenet264", False), ("torch", "densenet264", True),
        ("torchvision", "densenet201", False), ("torchvision", "densenet201", True),
        ("mx", "densenet201", False), ("mx", "densenet201", True),  # mx says why it cannot
        ("mx", "densenet264", False), ("mx", "densenet264", True),
        ("gluon", "densenet201", False),  # the zoo has no checkpointing: plain only
    ]
    assert any("gluon: no memory-efficient" in n for n in notes)
    assert any("torchvision: no official densenet264" in n for n in notes)


def test_densenet264_is_the_papers_deeper_config_for_benchmarks_only():
    c = cli.BENCH_PRESETS["densenet264"]
    assert c.block_config == (6, 12, 64, 48) and c.growth_rate == 32
    assert "densenet264" not in PRESETS
    with pytest.raises(DenseNetError, match="densenet264"):  # the message lists it as known
        _plan(["--preset", "densenet999"])


@pytest.mark.parametrize("argv", [["--frameworks", "caffe"], ["--fast", "turbo"],
                                  ["--batch", "0"], ["--env", "torch"], ["--rounds", "0"]])
def test_plan_rejects_bad_options_by_name(argv):
    with pytest.raises(DenseNetError):
        _plan(argv)


FIELDS = {
    "schema", "target", "framework", "implementation", "variant", "preset", "batch", "image_size",
    "mode", "memory_efficient", "device", "ok", "first_call_s", "compile_s", "median_s", "min_s",
    "max_s", "times_s", "cpu_median_s", "throughput", "throughput_min", "throughput_max", "rss_setup_mb",
    "rss_peak_mb", "rss_first_call_peak_mb", "rss_steady_peak_mb", "device_peak_mb", "versions", "threads", "os_threads", "forward_gmac",
    "achieved_gflops", "peak", "fraction_of_peak", "command", "runner_command", "load_avg_start",
    "huge_pages", "minor_faults_per_step", "run_id", "round", "rounds",
}


@pytest.fixture(scope="module")
def torch_lines(tmp_path_factory):
    if not envs.env_python("torch").exists():
        pytest.skip("no .venvs/torch (python3 dev.py envs torch)")
    out = tmp_path_factory.mktemp("bench") / "results.jsonl"
    argv = ["--frameworks", "torch", "--preset", "tiny", "--batch", "2", "--image-size", "32",
            "--iters", "2", "--warmup", "1", "--json", str(out), "--peak-size", "128", "--no-setup",
            "--threads", "1"]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.cli", *argv], capture_output=True,
                          text=True, cwd=envs.ROOT, env=envs.worker_env("spec"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()], argv


def test_cli_writes_one_json_line_per_mode_with_every_field(torch_lines):
    lines, argv = torch_lines
    assert [(ln["target"], ln["mode"]) for ln in lines] == [("torch", "infer"), ("torch", "train")]
    for line in lines:
        assert line["ok"], line.get("error")
        assert FIELDS <= set(line), FIELDS - set(line)
        assert line["schema"] == cli.SCHEMA and line["implementation"] == "ours"
        assert (line["preset"], line["batch"], line["image_size"]) == ("tiny", 2, 32)
        assert len(line["times_s"]) == 2
        assert line["min_s"] <= line["median_s"] <= line["max_s"]
        assert line["throughput"] == pytest.approx(2 / line["median_s"])
        assert line["rss_peak_mb"] >= line["rss_setup_mb"] > 0
        parts = (line["rss_first_call_peak_mb"], line["rss_steady_peak_mb"])
        assert line["rss_peak_mb"] == max(parts) and min(parts) > 0  # Linux resets the peak
        assert line["threads"]["intra_op"] == 1
        assert "torch" in line["versions"]
        macs = flops.forward_macs(get_preset("tiny"), 32)
        assert line["forward_gmac"] == pytest.approx(macs / 1e9)
        assert line["peak"]["n"] == 128 and line["peak"]["gflops"] > 0
        assert line["command"] == "densenet-bench " + " ".join(argv)
        assert "benchmarks.runner" in line["runner_command"]
        assert line["huge_pages"] is False and line["minor_faults_per_step"] >= 0
        assert (line["round"], line["rounds"]) == (1, 1)
    assert len({line["run_id"] for line in lines}) == 1


def test_rounds_alternate_the_order_and_the_table_pools_their_steps(tmp_path):
    if not envs.env_python("torch").exists():
        pytest.skip("no .venvs/torch (python3 dev.py envs torch)")
    out = tmp_path / "results.jsonl"
    argv = ["--frameworks", "torch", "--fast", "channels_last", "--preset", "tiny", "--batch",
            "2", "--image-size", "32", "--mode", "infer", "--iters", "2", "--warmup", "0",
            "--rounds", "2", "--json", str(out), "--peak-size", "0", "--no-setup",
            "--threads", "1"]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.cli", *argv], capture_output=True,
                          text=True, cwd=envs.ROOT, env=envs.worker_env("spec"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(ln["round"], ln["variant"]) for ln in lines] == [
        (1, "eager"), (1, "channels_last"), (2, "channels_last"), (2, "eager")]
    pooled = report.latest(lines)
    assert [ln["variant"] for ln in pooled] == ["eager", "channels_last"]
    for ln in pooled:
        rounds = [r for r in lines if r["variant"] == ln["variant"]]
        assert ln["times_s"] == rounds[0]["times_s"] + rounds[1]["times_s"]
        assert ln["round_medians_s"] == [r["median_s"] for r in rounds]


def test_huge_pages_add_the_malloc_tunable_to_every_runner_and_keep_the_users(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    for keras_backend in (None, "jax"):
        env = cli.runner_env("jax", keras_backend, 1, huge_pages=True)
        assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert cli.runner_env("jax", None, 1)["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert cli.runner_env("torch", None, None, huge_pages=True)["GLIBC_TUNABLES"] == (
        "glibc.malloc.hugetlb=1"
    )
    assert "GLIBC_TUNABLES" not in cli.runner_env("torch", None, None)


def test_report_writes_markdown_and_a_plot(torch_lines, tmp_path):
    lines, _ = torch_lines
    table = report.markdown(lines)
    assert table.splitlines()[0].startswith("| target |") and table.count("| torch |") == 2
    report.plot(lines, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_keeps_the_latest_rerun_of_each_measurement():
    a = {"target": "torch", "variant": "eager", "preset": "tiny", "batch": 2, "image_size": 32,
         "mode": "infer", "memory_efficient": False, "device": "cpu", "n": 1}
    b, c = {**a, "mode": "train", "n": 2}, {**a, "n": 3}
    assert [line["n"] for line in report.latest([a, b, c])] == [3, 2]
    huge = {**a, "huge_pages": True, "n": 4}  # another measurement, not a re-run
    rerun = {**a, "huge_pages": False, "n": 5}  # a line without the field ran without huge pages
    assert [line["n"] for line in report.latest([a, huge, rerun])] == [5, 4]
    assert report.row(huge)[1] == "eager +huge pages"


def test_pooled_rounds_are_the_median_of_every_step_and_leave_other_lines_alone():
    base = {"target": "jax", "variant": "jit", "preset": "tiny", "batch": 4, "image_size": 32,
            "mode": "train", "memory_efficient": False, "device": "cpu", "ok": True,
            "first_call_s": 10.0, "rss_peak_mb": 100.0, "rss_steady_peak_mb": 90.0,
            "achieved_gflops": 1.0, "fraction_of_peak": 0.5, "run_id": "a", "rounds": 2,
            "config": get_preset("tiny").to_dict(), "peak": {"gflops": 100.0}}
    r1 = {**base, "round": 1, "times_s": [1.0, 3.0, 5.0], "median_s": 3.0, "rss_peak_mb": 120.0,
          "cpu_median_s": 2.9, "minor_faults_per_step": 10}
    r2 = {**base, "round": 2, "times_s": [2.0, 2.0], "median_s": 2.0, "first_call_s": 12.0,
          "cpu_median_s": 1.9, "minor_faults_per_step": 30}
    other_run = {**r1, "run_id": "b"}
    failed = {**base, "round": 1, "ok": False, "target": "keras-jax"}
    old = {k: v for k, v in r1.items() if k not in ("run_id", "round", "rounds")}  # before --rounds
    pooled, fail, other, plain = report.pool_rounds([r1, failed, r2, other_run, old])
    assert pooled["times_s"] == [1.0, 3.0, 5.0, 2.0, 2.0] and pooled["median_s"] == 2.0
    assert (pooled["min_s"], pooled["max_s"]) == (1.0, 5.0)
    assert pooled["throughput"] == 2.0 and pooled["throughput_min"] == pytest.approx(0.8)
    assert pooled["round_medians_s"] == [3.0, 2.0] and "round" not in pooled
    assert pooled["first_call_s"] == 11.0 and pooled["compile_s"] == 9.0
    assert (pooled["rss_peak_mb"], pooled["rss_steady_peak_mb"]) == (120.0, 90.0)
    assert pooled["cpu_median_s"] == pytest.approx(2.4) and pooled["minor_faults_per_step"] == 20
    # GFLOP/s from the pooled median, not the rounds' stale 1.0
    step_gflop = flops.step_flops(get_preset("tiny"), 32, 4, "train") / 1e9
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
    return {"ok": True, "mode": "train", "target": "torch", "variant": "eager", "batch": 8,
            "image_size": 224, "preset": preset, "memory_efficient": memory_efficient,
            "config": PRESETS[preset].to_dict(), "rss_setup_mb": setup,
            "rss_steady_peak_mb": peak, "rss_peak_mb": peak, "throughput": 8 / median_s,
            "cpu_median_s": median_s}


def test_depth_table_compares_plain_and_memory_efficient_per_depth(tmp_path):
    lines = [_train_line("densenet121", False, 400, 1400, 2.0),
             _train_line("densenet121", True, 400, 900, 2.4),
             _train_line("densenet201", False, 400, 2400, 4.0),
             _train_line("densenet201", True, 400, 1000, 5.0)]
    table = report.depth_markdown(lines)
    assert "| torch/eager | densenet121 | 58 | 1000 | 500 | 50% | 64% | 4.00 | 3.33 | +20% | +20% |" in table
    assert "| torch/eager | densenet201 | 98 | 2000 | 600 | 30% | 42% | 2.00 | 1.60 | +25% | +25% |" in table
    assert "memeff: 2.5 MiB per dense layer" in table  # (600 - 500) / (98 - 58)
    report.depth_plot(lines, tmp_path / "depth.png")
    assert (tmp_path / "depth.png").read_bytes()[:4] == b"\x89PNG"
