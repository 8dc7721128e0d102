"""densenet_jax.worker: devices, the settings it applies, the real worker entry point, the
self-check mutation."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

jax = pytest.importorskip("jax")

import numpy as np  # noqa: E402

from densenet_spec import reference  # noqa: E402
from densenet_spec.case import make_case, read_results, result_keys, write_case  # noqa: E402
from densenet_spec.compare import assert_close  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.errors import DeviceUnavailableError  # noqa: E402
from densenet_spec.testing import check_mutation_errors, check_same_padding_mutation  # noqa: E402
from densenet_jax.worker import _precision_settings, environment, run_case  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _has(platform):
    try:
        return bool(jax.devices(platform))
    except RuntimeError:
        return False


def test_cpu_environment():
    info = environment("cpu", "float64")
    assert info["x64"] is True and info["precision"] == {"jax_enable_x64": True}
    assert info["device"].startswith("cpu") or info["device"].startswith("TFRT_CPU")
    assert info["versions"]["jax"] == jax.__version__


@pytest.mark.parametrize("device", ["gpu", "tpu"])
def test_missing_accelerator_raises_named_error(device):
    if _has(device):
        pytest.skip(f"a {device} is present")
    with pytest.raises(DeviceUnavailableError, match=f"jax: no {device} device"):
        environment(device, "float32")
    case = make_case(get_preset("tiny"), batch=2, image_size=16, device=device)
    with pytest.raises(DeviceUnavailableError, match=f"jax: no {device} device"):
        run_case(case)


@pytest.mark.parametrize("device", ["gpu", "tpu"])
def test_accelerator_precision_settings_ask_for_highest(device):
    """What a gpu / tpu run would set, checked without one: JAX's default lets float32 convs and
    matmuls use TF32 (GPU) or bfloat16 passes (TPU)."""
    settings = _precision_settings(device, "float32")
    assert settings == {"jax_default_matmul_precision": "highest"}
    assert _precision_settings(device, "float64") == {**settings, "jax_enable_x64": True}
    with pytest.raises(ValueError, match="float16"):
        _precision_settings(device, "float16")


def test_cpu_precision_settings_leave_matmul_precision_alone():
    assert _precision_settings("cpu", "float64") == {"jax_enable_x64": True}
    assert _precision_settings("cpu", "float32") == {}  # x64 is never turned off
    with pytest.raises(DeviceUnavailableError, match="jax: unknown device 'npu'"):
        _precision_settings("npu", "float32")


def test_gpu_environment_applies_exactly_the_gpu_settings(monkeypatch):
    """environment("gpu") with JAX's CPU standing in for the GPU: each setting is applied with
    jax.config.update and read back (restored afterwards)."""
    cpu_devices = jax.devices("cpu")
    monkeypatch.setattr(jax, "devices", lambda backend=None: cpu_devices)
    names = ("jax_default_matmul_precision", "jax_default_device")
    before = {n: getattr(jax.config, n) for n in names}
    try:
        info = environment("gpu", "float32")
        assert jax.config.jax_default_matmul_precision == "highest"
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
    assert info["precision"] == _precision_settings("gpu", "float32")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cpu_precision_settings_are_what_a_cpu_run_records(dtype):
    case = make_case(get_preset("tiny"), batch=2, image_size=16, dtype=dtype, quantities=("eval",))
    results, info = run_case(case)
    assert info["precision"] == _precision_settings("cpu", dtype)
    assert "jax_default_matmul_precision" not in info["precision"]
    assert results["eval/logits"].dtype == np.dtype(dtype)


def test_same_padding_mutation_changes_only_the_stem_padding():
    check_same_padding_mutation(run_case)


def test_unknown_or_inapplicable_mutation_raises():
    check_mutation_errors(run_case)


def _worker(case_dir, out):
    return subprocess.run(
        [sys.executable, "-m", "densenet_spec.worker", "jax", str(case_dir), str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_worker_entry_point_matches_oracle(tmp_path):
    case = make_case(get_preset("tiny"), batch=2, image_size=16, steps=2, memory_efficient=True)
    write_case(case, tmp_path / "case")
    proc = _worker(tmp_path / "case", tmp_path / "r.safetensors")
    assert proc.returncode == 0, proc.stderr
    results, info = read_results(tmp_path / "r.safetensors")
    assert info["framework"] == "jax" and info["memory_efficient"] is True
    assert info["x64"] is True
    assert sorted(results) == sorted(result_keys(case))  # safetensors stores keys sorted
    assert results["eval/stem"].shape == (2, 7, 4, 4)  # NCHW out, whatever the model's layout
    assert_close(results, reference.run_case(case)[0], "float64")


def test_worker_entry_point_gpu_exits_2_with_named_error(tmp_path):
    if _has("gpu"):
        pytest.skip("a gpu is present")
    case = make_case(get_preset("tiny"), batch=2, image_size=16, device="gpu")
    write_case(case, tmp_path / "case")
    proc = _worker(tmp_path / "case", tmp_path / "r.safetensors")
    assert proc.returncode == 2
    assert "DeviceUnavailableError: jax: no gpu device" in proc.stderr
    assert not (tmp_path / "r.safetensors").exists()
