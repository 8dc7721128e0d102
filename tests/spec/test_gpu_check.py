"""tools/gpu_check.sh without a GPU (a quick, clear stop) and its summary (tools/gpu_report.py)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "gpu_check.sh"


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_without_a_gpu_it_stops_at_once_and_says_so(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"  # what nvidia-smi says on a machine with the driver but no GPU
    smi.write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    smi.chmod(0o755)
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"},
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "no GPU" in proc.stdout
    assert time.monotonic() - start < 10
    assert "nothing was run" in (tmp_path / "out" / "NO_GPU.txt").read_text()
    assert not list((tmp_path / "out").glob("parity-*"))


def comparison(key, error, bound):
    return {"key": key, "error": error, "bound": bound, "ok": error <= bound}


def parity_json(ok: bool, grad_error: float) -> dict:
    comps = [comparison("eval/stem", 1e-7, 1e-5), comparison("train_grad/conv0", grad_error, 1e-4)]
    return {
        "ok": ok,
        "frameworks": {"torch": {"ok": True, "error": "", "info": {"device": "cuda:0"}}},
        "pairs": [{"a": "torch", "b": "oracle", "ok": ok, "comparisons": comps}],
    }


def test_report_reads_parity_tf32_and_bench_files(tmp_path):
    (tmp_path / "parity-d2l-float32.json").write_text(json.dumps(parity_json(True, 2e-6)))
    (tmp_path / "parity-d2l-float32.rc").write_text("0 41\n")
    (tmp_path / "parity-d2l-float32-tf32.json").write_text(json.dumps(parity_json(False, 2e-3)))
    (tmp_path / "parity-d2l-float32-tf32.rc").write_text("1 40\n")
    (tmp_path / "parity-densenet121-float64.rc").write_text("124 300\n")  # timed out: no JSON
    bench = {"target": "torch", "mode": "train", "ok": True, "throughput": 812.5}
    bench |= {"median_s": 0.08, "compile_s": 1.2, "device_peak_mb": 5120.0, "batch": 64}
    (tmp_path / "bench.jsonl").write_text(json.dumps(bench) + "\n")
    (tmp_path / "device.csv").write_text("name, driver_version\nNVIDIA H100, 580.1\n")
    (tmp_path / "parity-tf32.skipped").write_text("skipped: time budget\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gpu_report.py"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1  # the densenet121 run timed out; the TF32 failure alone is fine
    summary = json.loads((tmp_path / "summary.json").read_text())
    (move,) = [m for m in summary["tf32"] if m["quantity"] == "train_grad"]
    assert move["error_tf32_off"] == 2e-6 and move["error_tf32_default"] == 2e-3
    assert round(move["factor"]) == 1000
    text = (tmp_path / "README.md").read_text()
    assert "NVIDIA H100" in text and "| torch | train | 812.5 |" in text
    assert "parity-densenet121-float64 | off | FAIL" in text
    assert "TF32 at the framework default (documented, not a failure)" in text
    (tmp_path / "parity-densenet121-float64.rc").unlink()
    again = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_report.py"), str(tmp_path)])
    assert again.returncode == 0
