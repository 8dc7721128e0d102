"""densenet_jax.adapter: devices, the settings it applies, the variants it builds, the real worker
entry point, the self-check mutation."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

jax = pytest.importorskip("jax")

import numpy as np  # noqa: E402
from densenet_testing import check_mutation_errors, check_same_padding_mutation  # noqa: E402

from densenet_jax.adapter import Adapter, environment  # noqa: E402
from densenet_jax.precision import precision_settings  # noqa: E402
from densenet_spec import reference  # noqa: E402
from densenet_spec.case import make_case, read_results, result_keys, write_case  # noqa: E402
from densenet_spec.compare import assert_close  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.errors import DeviceUnavailableError  # noqa: E402
from densenet_spec.frameworks import VARIANTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def run_case(case):
    from densenet_spec.driver import run_case

    return run_case(case, Adapter(case))


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
    settings = precision_settings(device, "float32")
    assert settings == {"jax_default_matmul_precision": "highest"}
    assert precision_settings(device, "float64") == {**settings, "jax_enable_x64": True}
    with pytest.raises(ValueError, match="float16"):
        precision_settings(device, "float16")


def test_cpu_precision_settings_leave_matmul_precision_alone():
    assert precision_settings("cpu", "float64") == {"jax_enable_x64": True}
    assert precision_settings("cpu", "float32") == {}  # x64 is never turned off
    with pytest.raises(DeviceUnavailableError, match="jax: unknown device 'npu'"):
        precision_settings("npu", "float32")


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
    assert info["precision"] == precision_settings("gpu", "float32")
    assert info["tf32"] == "off"


def test_tf32_default_leaves_the_gpu_precision_at_jaxs_default():
    """--tf32 default: no jax_default_matmul_precision on a GPU (JAX's default, TF32 allowed);
    a TPU run asks for "highest" whatever tf32 says; other values are refused."""
    assert precision_settings("gpu", "float32", tf32="default") == {}
    assert precision_settings("gpu", "float64", tf32="default") == {"jax_enable_x64": True}
    assert "jax_default_matmul_precision" not in precision_settings("gpu", "float32", "default")
    for tf32 in ("off", "default"):
        assert precision_settings("tpu", "float32", tf32) == {
            "jax_default_matmul_precision": "highest"
        }
    assert precision_settings("cpu", "float32", "default") == {}
    with pytest.raises(ValueError, match="tf32 must be one of off, default"):
        precision_settings("gpu", "float32", tf32="on")


def test_gpu_environment_with_tf32_default_records_the_precision_read_back(monkeypatch):
    cpu_devices = jax.devices("cpu")
    monkeypatch.setattr(jax, "devices", lambda backend=None: cpu_devices)
    names = ("jax_default_matmul_precision", "jax_default_device")
    before = {n: getattr(jax.config, n) for n in names}
    try:
        jax.config.update("jax_default_matmul_precision", None)
        info = environment("gpu", "float32", tf32="default")
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
    assert info["precision"] == {"jax_default_matmul_precision": None}
    assert info["tf32"] == "default"
    case = make_case(get_preset("tiny"), batch=2, image_size=16, quantities=("eval",))
    case = dataclasses.replace(case, options={**case.options, "tf32": "default"})
    assert Adapter(case).info["tf32"] == "default"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cpu_precision_settings_are_what_a_cpu_run_records(dtype):
    case = make_case(get_preset("tiny"), batch=2, image_size=16, dtype=dtype, quantities=("eval",))
    results, info = run_case(case)
    assert info["precision"] == precision_settings("cpu", dtype)
    assert "jax_default_matmul_precision" not in info["precision"]
    assert results["eval/logits"].dtype == np.dtype(dtype)


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_padding_mutation_changes_only_the_stem_padding(variant):
    check_same_padding_mutation(lambda case: run_case(dataclasses.replace(case, variant=variant)))


def test_info_names_the_fast_paths():
    """The fast variant records the xla_cpu.py kernels it uses on this device; plain none."""
    case = make_case(get_preset("tiny"), batch=2, image_size=16, quantities=("eval",))
    assert Adapter(case).info["fast_paths"] == []
    fast = Adapter(dataclasses.replace(case, variant="fast")).info["fast_paths"]
    assert fast == [
        "densenet_jax.xla_cpu.batch_norm",
        "densenet_jax.xla_cpu.Conv",
        "densenet_jax.xla_cpu.max_pool",
    ]


def test_unknown_or_inapplicable_mutation_raises():
    check_mutation_errors(run_case)


def _worker(case_dir, out):
    return subprocess.run(
        [sys.executable, "-m", "densenet_spec.worker", "densenet_jax", str(case_dir), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_worker_entry_point_matches_oracle(tmp_path):
    case = make_case(
        get_preset("tiny"), batch=2, image_size=16, steps=2, memory_efficient=True, variant="fast"
    )
    write_case(case, tmp_path / "case")
    proc = _worker(tmp_path / "case", tmp_path / "r.safetensors")
    assert proc.returncode == 0, proc.stderr
    results, info = read_results(tmp_path / "r.safetensors")
    assert info["package"] == "densenet_jax" and info["memory_efficient"] is True
    assert info["variant"] == "fast" and len(info["fast_paths"]) == 3
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


@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
def test_linear_pieces_match_oracle(variant, memory_efficient):
    """With the "pieces" option the adapter reports every BatchNorm's output of its gradient
    passes (the ReLU's input, recorded by nnx.capture in the same jit), as the oracle does; the
    memory-efficient layers hand theirs out of their jax.custom_vjp (memory_efficient.py)."""
    case = make_case(
        get_preset("tiny"), batch=2, image_size=16, variant=variant,
        memory_efficient=memory_efficient, options={"pieces": True}, quantities=("grad", "step"),
    )  # fmt: skip
    (ours, info), oracle = run_case(case), reference.run_case(case)[0]
    pieces = [k for k in oracle if "_piece/" in k]
    assert pieces and {k for k in ours if "_piece/" in k} == set(pieces)
    assert "pieces" not in info  # no fallback reason: the pieces were reported
    assert min(float(ours[k].min()) for k in pieces) < 0  # not the ReLU's output
    assert_close(ours, oracle, "float64")


def test_memory_efficient_pieces_in_float32_match_the_plain_model():
    """float32: the memory-efficient model's pieces are the plain model's BatchNorm outputs (the
    same forward computation), and its gradients agree with the oracle on its own piece."""
    from densenet_spec import pieces as piece_rule
    from densenet_spec.case import as_dtype

    case = make_case(
        get_preset("d2l"), batch=2, image_size=32, dtype="float32",
        options={"pieces": True}, quantities=("grad",),
    )  # fmt: skip
    plain = run_case(case)[0]
    ours = run_case(dataclasses.replace(case, memory_efficient=True))[0]
    keys = [k for k in plain if "_piece/" in k]
    assert keys and {k for k in ours if "_piece/" in k} == set(keys)
    for k in keys:
        np.testing.assert_allclose(ours[k], plain[k], rtol=0, atol=1e-5 * np.abs(plain[k]).max())
    truth = reference.run_case(as_dtype(case, "float64"))[0]
    own = piece_rule.oracle_pieces(as_dtype(case, "float64"))
    errors, _ = piece_rule.float32_errors(case, truth, own)
    ref = piece_rule.on_piece(case, piece_rule.pieces_of(ours, case.config), truth, own)
    grads = {k: v for k, v in ref.items() if k.startswith("train_grad/")}
    assert_close(ours, grads, "float32", errors)
