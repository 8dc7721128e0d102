"""densenet-parity end to end: the console command, its JSON, its exit codes and its errors."""

import json
import subprocess
import sys

import densenet_envs as envs
from densenet_spec.case import make_case, result_keys
from densenet_spec.config import get_preset
from densenet_spec.params import param_specs, stage_names


def parity(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "densenet_spec.cli", *args, "--no-setup"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=envs.worker_env("spec"),
    )


def test_d2l_torch_float64_writes_every_comparison(tmp_path, require_envs):
    require_envs("torch")
    out = tmp_path / "out.json"
    proc = parity(
        "--preset", "d2l", "--frameworks", "torch", "--dtype", "float64", "--json", str(out)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["ok"] is True
    (pair,) = report["pairs"]
    assert (pair["a"], pair["b"]) == ("torch", "oracle")
    cfg = get_preset("d2l")
    want = result_keys(make_case(cfg, image_size=96))
    assert [c["key"] for c in pair["comparisons"]] == want
    # d2l: 21 BatchNorms (stem, 16 layers, 3 transitions, head) -> 42 running stats; 126 tensors.
    assert len(param_specs(cfg)) == 126
    assert len(want) == 2 * (len(stage_names(cfg)) + 1) + 2 + (126 - 42) + 126
    for c in pair["comparisons"]:
        assert c["error"] <= c["bound"], c
        assert c["bound"] <= 1e-9
    assert report["case"]["image_size"] == [96, 96]
    assert report["frameworks"]["torch"]["info"]["versions"]["torch"].startswith("2.13")
    assert "PARITY OK" in proc.stdout


def test_bad_arguments_give_named_errors_not_tracebacks():
    proc = parity("--preset", "densenet122")
    assert proc.returncode == 2 and "unknown preset 'densenet122'" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    proc = parity("--frameworks", "torch,caffe")
    assert proc.returncode == 2 and "unknown framework 'caffe'" in proc.stdout
    proc = parity("--frameworks", ",")
    assert (
        proc.returncode == 2
        and "no framework named" in proc.stdout
        and "PARITY OK" not in proc.stdout
    )
    proc = parity("--image-size", "0")
    assert proc.returncode == 2 and "--image-size must be >= 1" in proc.stdout
    proc = parity("--preset", "d2l", "--image-size", "20")
    assert proc.returncode == 2 and "too small" in proc.stdout
    proc = parity("--device", "quantum")
    assert proc.returncode == 2 and "invalid choice: 'quantum'" in proc.stderr


def test_missing_device_fails_that_framework_by_name(tmp_path, require_envs):
    require_envs("torch")
    out = tmp_path / "gpu.json"
    proc = parity(
        "--preset", "tiny", "--frameworks", "torch", "--device", "gpu", "--json", str(out)
    )
    assert proc.returncode == 1
    report = json.loads(out.read_text())
    torch = report["frameworks"]["torch"]
    assert (
        torch["ok"] is False
        and "DeviceUnavailableError" in torch["error"]
        and "gpu" in torch["error"]
    )
    assert "Traceback" not in torch["error"]
    assert "torch did not run" in proc.stdout
