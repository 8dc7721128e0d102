"""densenet-parity end to end: the console command, its JSON, its exit codes and its errors."""

import json

import pytest
from densenet_testing import spec_command

import densenet_envs as envs
from densenet_spec.case import make_case, result_keys
from densenet_spec.config import get_preset
from densenet_spec.params import param_specs, stage_names


def parity(*args, timeout=900):
    return spec_command("densenet_spec.cli", *args, "--no-setup", timeout=timeout)


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
    """--device gpu with the CPU-only torch build (named with --python: --device gpu would
    otherwise look for the CUDA environment, torch-gpu): that worker fails by name."""
    require_envs("torch")
    out = tmp_path / "gpu.json"
    cpu_torch = f"torch={envs.env_python('torch')}"
    proc = parity(
        "--preset",
        "tiny",
        "--frameworks",
        "torch",
        "--device",
        "gpu",
        "--json",
        str(out),
        "--python",
        cpu_torch,
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


def test_tf32_default_reaches_the_torch_workers_recorded_settings(tmp_path):
    """--tf32 default is case option "tf32": the torch worker records it beside its precision
    settings (on CPU those are the CPU ones: TF32 does nothing there); the case in the report
    carries it; without the option nothing is added to the case."""
    if not envs.env_python("torch").exists():
        pytest.skip("environment not built: torch (python3 dev.py envs)")
    base = ["--preset", "tiny", "--image-size", "16", "--frameworks", "torch"]
    base += ["--quantities", "eval", "--dtype", "float32"]
    infos = {}
    for mode in ("off", "default"):
        out = tmp_path / f"{mode}.json"
        proc = parity(*base, "--tf32", mode, "--json", str(out))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(out.read_text())
        infos[mode] = report["frameworks"]["torch"]["info"]
        assert report["case"]["tf32"] == mode
    assert infos["default"]["tf32"] == "default" and infos["off"]["tf32"] == "off"
    cpu = {"torch.use_deterministic_algorithms": True}
    assert infos["default"]["precision"] == infos["off"]["precision"] == cpu
    assert infos["default"]["interpreter"]["source"].startswith("built: requirements/torch")
    proc = parity("--tf32", "on")
    assert proc.returncode == 2 and "invalid choice: 'on'" in proc.stderr


def test_float64_parity_over_20_steps_on_digits_batches(tmp_path, require_envs):
    """Issue 18: --data digits --steps 20, every framework against the oracle and each other
    within the float64 bounds after 20 SGD steps on densenet-train's first 20 batches."""
    frameworks = ["torch", "jax", "tf", "mx"]
    require_envs(*frameworks)
    out = tmp_path / "out.json"
    args = ["--preset", "tiny", "--data", "digits", "--steps", "20", "--image-size", "16"]
    args += ["--batch", "8", "--dtype", "float64", "--frameworks", ",".join(frameworks)]
    proc = parity(*args, "--quantities", "step", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "digits training batches, 20 SGD step(s)" in proc.stdout
    report = json.loads(out.read_text())
    assert report["ok"] and report["case"]["steps"] == 20
    assert report["case"]["inputs"] == "digits training batches"
    assert report["case"]["config"]["in_channels"] == 1
    assert len(report["pairs"]) == 4 + 6
    worst = max(c["error"] for p in report["pairs"] for c in p["comparisons"])
    assert worst <= 1e-9
