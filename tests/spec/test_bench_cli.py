"""densenet-bench end to end: tiny runs of the CLI for torch (skipped without .venvs/torch), the
JSON lines they write and the reports made from them. Timings are never asserted."""

import json
import subprocess
import sys

import pytest

import densenet_envs as envs
from densenet_bench import launch, metrics, plots, report, results
from densenet_spec.config import get_preset

FIELDS = {
    "schema",
    "target",
    "framework",
    "implementation",
    "model",
    "variant",
    "preset",
    "batch",
    "image_size",
    "mode",
    "memory_efficient",
    "device",
    "ok",
    "first_call_s",
    "compile_s",
    "median_s",
    "min_s",
    "max_s",
    "times_s",
    "cpu_median_s",
    "throughput",
    "throughput_min",
    "throughput_max",
    "rss_setup_mb",
    "rss_peak_mb",
    "rss_first_call_peak_mb",
    "rss_steady_peak_mb",
    "device_peak_mb",
    "versions",
    "threads",
    "os_threads",
    "forward_gmac",
    "achieved_gflops",
    "peak",
    "fraction_of_peak",
    "command",
    "runner_command",
    "load_avg_start",
    "huge_pages",
    "minor_faults_per_step",
    "run_id",
    "round",
    "rounds",
}


@pytest.fixture(scope="module")
def torch_lines(tmp_path_factory):
    if not envs.env_python("torch").exists():
        pytest.skip("no .venvs/torch (python3 dev.py envs torch)")
    out = tmp_path_factory.mktemp("bench") / "results.jsonl"
    argv = [
        "--frameworks",
        "torch",
        "--preset",
        "tiny",
        "--batch",
        "2",
        "--image-size",
        "32",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--json",
        str(out),
        "--peak-size",
        "128",
        "--no-setup",
        "--threads",
        "1",
    ]  # both model variants, the default
    proc = subprocess.run(
        [sys.executable, "-m", "densenet_bench.cli", *argv],
        capture_output=True,
        text=True,
        cwd=envs.ROOT,
        env=envs.worker_env("spec"),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()], argv


def test_cli_writes_one_json_line_per_mode_with_every_field(torch_lines):
    lines, argv = torch_lines
    assert [(ln["target"], ln["model"], ln["mode"]) for ln in lines] == [
        ("torch", "plain", "infer"),
        ("torch", "plain", "train"),
        ("torch", "fast", "infer"),
        ("torch", "fast", "train"),
    ]
    for line in lines:
        assert line["ok"], line.get("error")
        assert FIELDS <= set(line), FIELDS - set(line)
        assert line["schema"] == results.SCHEMA and line["implementation"] == "ours"
        assert (line["preset"], line["batch"], line["image_size"]) == ("tiny", 2, 32)
        assert len(line["times_s"]) == 2
        assert line["min_s"] <= line["median_s"] <= line["max_s"]
        assert line["throughput"] == pytest.approx(2 / line["median_s"])
        assert line["rss_peak_mb"] >= line["rss_setup_mb"] > 0
        parts = (line["rss_first_call_peak_mb"], line["rss_steady_peak_mb"])
        assert line["rss_peak_mb"] == max(parts) and min(parts) > 0  # Linux resets the peak
        assert line["threads"]["intra_op"] == 1
        assert "torch" in line["versions"]
        macs = metrics.forward_macs(get_preset("tiny"), 32)
        assert line["forward_gmac"] == pytest.approx(macs / 1e9)
        assert line["peak"]["n"] == 128 and line["peak"]["gflops"] > 0
        assert line["command"] == "densenet-bench " + " ".join(argv)
        assert "densenet_bench.runner" in line["runner_command"]
        assert line["huge_pages"] is False and line["minor_faults_per_step"] >= 0
        assert (line["round"], line["rounds"]) == (1, 1)
        assert line["interpreter"]["source"] == "built: requirements/torch.txt"
        assert line["interpreter"]["python"] == str(envs.env_python("torch"))
    assert len({line["run_id"] for line in lines}) == 1


def test_a_bad_python_stops_the_run_before_anything_runs(tmp_path):
    """--python is checked up front (densenet_envs.interpreters): exit 2, nothing written."""
    out = tmp_path / "results.jsonl"
    common = ["--preset", "tiny", "--batch", "2", "--image-size", "32", "--json", str(out)]
    common += ["--peak-size", "0", "--no-setup"]
    for extra, words in [
        (["--frameworks", "torch", "--python", f"torch={tmp_path / 'none'}"], "no such file"),
        (["--frameworks", "torch", "--python", "jax=/x"], "no target of this run uses it"),
        (["--frameworks", "torch", "--python", "pytorch=/x"], "unknown name 'pytorch'"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "densenet_bench.cli", *common, *extra],
            capture_output=True,
            text=True,
            cwd=envs.ROOT,
            env=envs.worker_env("spec"),
            timeout=120,
        )
        text = " ".join((proc.stdout + proc.stderr).split())
        assert proc.returncode == 2 and words in text, text
        assert "Traceback" not in text and not out.exists()


def test_rounds_alternate_the_order_and_the_table_pools_their_steps(tmp_path):
    if not envs.env_python("torch").exists():
        pytest.skip("no .venvs/torch (python3 dev.py envs torch)")
    out = tmp_path / "results.jsonl"
    argv = [
        "--frameworks",
        "torch",
        "--model",
        "plain",
        "--fast",
        "channels_last",
        "--preset",
        "tiny",
        "--batch",
        "2",
        "--image-size",
        "32",
        "--mode",
        "infer",
        "--iters",
        "2",
        "--warmup",
        "0",
        "--rounds",
        "2",
        "--json",
        str(out),
        "--peak-size",
        "0",
        "--no-setup",
        "--threads",
        "1",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "densenet_bench.cli", *argv],
        capture_output=True,
        text=True,
        cwd=envs.ROOT,
        env=envs.worker_env("spec"),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(ln["round"], ln["variant"]) for ln in lines] == [
        (1, "eager"),
        (1, "channels_last"),
        (2, "channels_last"),
        (2, "eager"),
    ]
    pooled = results.latest(lines)
    assert [ln["variant"] for ln in pooled] == ["eager", "channels_last"]
    for ln in pooled:
        rounds = [r for r in lines if r["variant"] == ln["variant"]]
        assert ln["times_s"] == rounds[0]["times_s"] + rounds[1]["times_s"]
        assert ln["round_medians_s"] == [r["median_s"] for r in rounds]


def test_huge_pages_add_the_malloc_tunable_to_every_runner_and_keep_the_users(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    for keras_backend in (None, "jax"):
        env = launch.runner_env("jax", keras_backend, 1, huge_pages=True)
        assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert launch.runner_env("jax", None, 1)["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert launch.runner_env("torch", None, None, huge_pages=True)["GLIBC_TUNABLES"] == (
        "glibc.malloc.hugetlb=1"
    )
    assert "GLIBC_TUNABLES" not in launch.runner_env("torch", None, None)


def test_report_writes_markdown_and_a_plot(torch_lines, tmp_path):
    lines, _ = torch_lines
    table = report.markdown(lines)
    assert table.splitlines()[0].startswith("| target |") and table.count("| torch |") == 4
    assert "| torch | fast | eager |" in table
    plots.plot(lines, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peer_ratios_compare_ours_with_the_peer_of_the_same_run(torch_lines):
    lines, _ = torch_lines
    peer = [
        {
            **ln,
            "target": "torchvision",
            "implementation": "torchvision",
            "model": None,
            "throughput": ln["throughput"] / 2,
            "rss_peak_mb": ln["rss_peak_mb"] * 2,
        }
        for ln in lines
        if ln["model"] == "plain"
    ]
    ratios = report.peer_ratios(lines + peer)
    assert [(r["ours"], r["peer"], r["mode"]) for r in ratios] == [
        ("torch/plain/eager", "torchvision/eager", "infer"),
        ("torch/plain/eager", "torchvision/eager", "train"),
        ("torch/fast/eager", "torchvision/eager", "infer"),
        ("torch/fast/eager", "torchvision/eager", "train"),
    ]
    assert ratios[0]["speed_ratio"] == pytest.approx(2.0)
    assert ratios[0]["rss_ratio"] == pytest.approx(0.5)
    assert "| torch/fast/eager | torchvision/eager | train |" in report.ratios_markdown(
        lines + peer
    )
