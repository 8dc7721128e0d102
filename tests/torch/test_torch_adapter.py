"""densenet_torch.adapter: devices, the settings it applies, the real worker entry point."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


from densenet_testing import check_mutation_errors, check_same_padding_mutation  # noqa: E402

from densenet_spec import reference  # noqa: E402
from densenet_spec.case import make_case, read_results, result_keys, write_case  # noqa: E402
from densenet_spec.compare import assert_close  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.driver import run_case as drive  # noqa: E402
from densenet_spec.errors import DeviceUnavailableError  # noqa: E402
from densenet_torch.adapter import Adapter, environment  # noqa: E402
from densenet_torch.precision import SETTINGS, TF32_SETTINGS, precision_settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def run_case(case):
    return drive(case, Adapter(case))


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")


def test_cpu_environment_is_deterministic():
    info = environment("cpu", "float64")
    assert torch.are_deterministic_algorithms_enabled()
    assert info["precision"] == {"torch.use_deterministic_algorithms": True}
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


def test_gpu_precision_settings_turn_tf32_off_and_cudnn_deterministic():
    """What a gpu run would set, checked without a GPU: the names are torch's own attributes."""
    settings = precision_settings("gpu", "float32")
    assert settings["torch.backends.cuda.matmul.allow_tf32"] is False  # matmul: no TF32
    assert settings["torch.backends.cudnn.allow_tf32"] is False  # convolutions: no TF32
    assert settings["torch.backends.cudnn.deterministic"] is True
    assert settings["torch.backends.cudnn.benchmark"] is False
    assert settings["torch.use_deterministic_algorithms"] == "warn_only"
    assert settings["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert precision_settings("gpu", "float64") == settings
    with pytest.raises(ValueError, match="float16"):
        precision_settings("gpu", "float16")


def test_gpu_environment_applies_exactly_the_gpu_settings(monkeypatch):
    """environment("gpu") with torch told a GPU is there: every setting is applied through
    precision.SETTINGS and read back (on CPU these flags change nothing; restored afterwards)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stand-in GPU")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # overridden, restored on teardown
    settings = precision_settings("gpu", "float32")
    before = {n: SETTINGS[n][1]() for n in settings if n != "CUBLAS_WORKSPACE_CONFIG"}
    try:
        info = environment("gpu", "float32")
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 is False
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        for name, value in before.items():
            SETTINGS[name][0](value)
    assert info["precision"] == settings
    assert info["device_name"] == "stand-in GPU"


def test_tf32_default_leaves_torchs_tf32_flags_alone_and_records_them():
    """densenet-parity --tf32 default (case option "tf32"): a GPU run sets everything but the two
    allow_tf32 flags, and still records them as read back (torch's defaults: matmul False, cuDNN
    convolutions True); the other settings are the parity ones."""
    off = precision_settings("gpu", "float32")
    default = precision_settings("gpu", "float32", tf32="default")
    assert set(TF32_SETTINGS) <= set(off) and not set(TF32_SETTINGS) & set(default)
    assert default == {k: v for k, v in off.items() if k not in TF32_SETTINGS}
    assert precision_settings("cpu", "float32", tf32="default") == precision_settings(
        "cpu", "float32"
    )
    with pytest.raises(ValueError, match="tf32"):
        precision_settings("gpu", "float32", tf32="on")


def test_gpu_environment_with_tf32_default_does_not_touch_the_tf32_flags(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stand-in GPU")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # overridden, restored on teardown
    names = [n for n in precision_settings("gpu", "float32") if n != "CUBLAS_WORKSPACE_CONFIG"]
    before = {n: SETTINGS[n][1]() for n in names}
    try:
        SETTINGS[TF32_SETTINGS[0]][0](True)  # stand-ins for values set elsewhere: kept as they are
        SETTINGS[TF32_SETTINGS[1]][0](False)
        info = environment("gpu", "float32", tf32="default")
        assert torch.backends.cuda.matmul.allow_tf32 is True
        assert torch.backends.cudnn.allow_tf32 is False
    finally:
        for name, value in before.items():
            SETTINGS[name][0](value)
    assert info["tf32"] == "default"
    assert info["precision"][TF32_SETTINGS[0]] is True  # read back, not set
    assert info["precision"][TF32_SETTINGS[1]] is False
    applied = {k: v for k, v in info["precision"].items() if k not in TF32_SETTINGS}
    assert applied == precision_settings("gpu", "float32", tf32="default")


def test_the_tf32_case_option_reaches_the_recorded_settings_on_cpu():
    """On CPU TF32 does nothing: the CPU settings are recorded and "tf32" says what was asked."""
    case = make_case(
        get_preset("tiny"),
        batch=2,
        image_size=16,
        quantities=("eval",),
        options={"tf32": "default"},
    )
    _, info = run_case(case)
    assert info["tf32"] == "default"
    assert info["precision"] == precision_settings("cpu", "float64")
    assert environment("cpu", "float64")["tf32"] == "off"


def test_cpu_precision_settings_are_what_a_cpu_run_records():
    case = make_case(get_preset("tiny"), batch=2, image_size=16, quantities=("eval",))
    _, info = run_case(case)
    assert info["precision"] == precision_settings("cpu", "float64")
    assert info["precision"] == {"torch.use_deterministic_algorithms": True}
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()


@pytest.mark.parametrize(
    "variant, options", [("plain", {"channels_last": True}), ("fast", {})], ids=["option", "fast"]
)
def test_result_keys_and_layout(variant, options):
    case = make_case(
        get_preset("tiny"), batch=2, image_size=16, steps=1, variant=variant, options=options
    )
    results, info = run_case(case)
    assert list(results) == result_keys(case)
    assert results["eval/stem"].shape == (2, 7, 4, 4)  # NCHW even with channels_last
    assert info["channels_last"] is True and info["memory_efficient"] is False
    assert info["fast_paths"] == (["channels_last"] if variant == "fast" else [])


def test_build_returns_a_fresh_model_in_the_case_variant():
    case = make_case(
        get_preset("tiny"), batch=2, image_size=16, variant="fast", memory_efficient=True
    )
    adapter = Adapter(case)
    first, second = adapter.build(), adapter.build()
    assert first is not second
    conv = first.stem.conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and conv.dtype == torch.float64
    assert type(first.blocks[0]).__name__ == "MemoryEfficientDenseBlock"


def test_threads_option_sets_torch_threads():
    before = torch.get_num_threads()
    case = make_case(get_preset("tiny"), batch=2, image_size=16, options={"threads": 1})
    try:
        assert Adapter(case).info["num_threads"] == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _worker(case_dir, out, env=None):
    return subprocess.run(
        [sys.executable, "-m", "densenet_spec.worker", "densenet_torch", str(case_dir), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


@pytest.mark.parametrize("variant", ["plain", "fast"])
def test_worker_entry_point_matches_oracle(tmp_path, variant):
    case = make_case(
        get_preset("tiny"), batch=2, image_size=16, steps=2, memory_efficient=True, variant=variant
    )
    write_case(case, tmp_path / "case")
    proc = _worker(tmp_path / "case", tmp_path / "r.safetensors")
    assert proc.returncode == 0, proc.stderr
    results, info = read_results(tmp_path / "r.safetensors")
    assert info["package"] == "densenet_torch" and info["memory_efficient"] is True
    assert info["variant"] == variant
    assert_close(results, reference.run_case(case)[0], "float64")


@NO_GPU
def test_worker_entry_point_gpu_exits_2_with_named_error(tmp_path):
    case = make_case(get_preset("tiny"), batch=2, image_size=16, device="gpu")
    write_case(case, tmp_path / "case")
    proc = _worker(tmp_path / "case", tmp_path / "r.safetensors")
    assert proc.returncode == 2
    assert "DeviceUnavailableError: torch: no gpu device" in proc.stderr
    assert not (tmp_path / "r.safetensors").exists()


@pytest.mark.parametrize("variant", ["plain", "fast"])
def test_same_padding_mutation_changes_only_the_stem_padding(variant):
    check_same_padding_mutation(lambda case: run_case(dataclasses.replace(case, variant=variant)))


def test_unknown_or_inapplicable_mutation_raises():
    check_mutation_errors(run_case)
