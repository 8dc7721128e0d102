"""densenet_torch.worker: devices, the settings it applies, the real worker entry point."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from densenet_spec import reference  # noqa: E402
from densenet_spec.case import make_case, read_results, result_keys, write_case  # noqa: E402
from densenet_spec.compare import assert_close  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.errors import DeviceUnavailableError  # noqa: E402
from densenet_torch.worker import environment, run_case  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")


def test_cpu_environment_is_deterministic():
    info = environment("cpu", "float64")
    assert torch.are_deterministic_algorithms_enabled()
    assert info["precision"] == {"deterministic_algorithms": True}
    assert info["versions"]["torch"] == torch.__version__


@NO_GPU
def test_gpu_without_gpu_raises_named_error():
    with pytest.raises(DeviceUnavailableError, match="torch: no gpu device"):
        environment("gpu", "float32")
    case = make_case(get_preset("tiny"), batch=2, image_size=16, device="gpu")
    with pytest.raises(DeviceUnavailableError, match="torch: no gpu device"):
        run_case(case)


def test_tpu_is_not_supported():
    with pytest.raises(DeviceUnavailableError, match="torch/XLA"):
        environment("tpu", "float32")


def test_result_keys_and_layout():
    case = make_case(get_preset("tiny"), batch=2, image_size=16, steps=1,
                     options={"channels_last": True})
    results, info = run_case(case)
    assert list(results) == result_keys(case)
    assert results["eval/stem"].shape == (2, 7, 4, 4)  # NCHW even with channels_last
    assert info["channels_last"] is True and info["memory_efficient"] is False


def _worker(case_dir, out, env=None):
    return subprocess.run(
        [sys.executable, "-m", "densenet_spec.worker", "torch", str(case_dir), str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_worker_entry_point_matches_oracle(tmp_path):
    case = make_case(get_preset("tiny"), batch=2, image_size=16, steps=2, memory_efficient=True)
    write_case(case, tmp_path / "case")
    proc = _worker(tmp_path / "case", tmp_path / "r.safetensors")
    assert proc.returncode == 0, proc.stderr
    results, info = read_results(tmp_path / "r.safetensors")
    assert info["framework"] == "torch" and info["memory_efficient"] is True
    assert_close(results, reference.run_case(case)[0], "float64")


@NO_GPU
def test_worker_entry_point_gpu_exits_2_with_named_error(tmp_path):
    case = make_case(get_preset("tiny"), batch=2, image_size=16, device="gpu")
    write_case(case, tmp_path / "case")
    proc = _worker(tmp_path / "case", tmp_path / "r.safetensors")
    assert proc.returncode == 2
    assert "DeviceUnavailableError: torch: no gpu device" in proc.stderr
    assert not (tmp_path / "r.safetensors").exists()
