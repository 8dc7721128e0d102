"""densenet_jax.worker: devices, the settings it applies, the real worker entry point."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

jax = pytest.importorskip("jax")

from densenet_spec import reference  # noqa: E402
from densenet_spec.case import make_case, read_results, result_keys, write_case  # noqa: E402
from densenet_spec.compare import assert_close  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.errors import DeviceUnavailableError  # noqa: E402
from densenet_jax.worker import environment, run_case  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _has(platform):
    try:
        return bool(jax.devices(platform))
    except RuntimeError:
        return False


def test_cpu_environment():
    info = environment("cpu", "float64")
    assert info["x64"] is True and info["precision"] == "default"
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
