"""densenet_tf.adapter: the real entry point as the harness runs it (a fresh process, files in and
out), the precision settings it applies, the self-check mutation; densenet_tf.variants."""

import os

os.environ["KERAS_BACKEND"] = "tensorflow"

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from densenet_testing import check_mutation_errors, check_same_padding_mutation  # noqa: E402

from densenet_spec.case import make_case, read_results, relu_names, write_case  # noqa: E402
from densenet_spec.compare import assert_close  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.driver import run_case  # noqa: E402
from densenet_spec.errors import UnknownVariantError  # noqa: E402
from densenet_tf.adapter import Adapter, environment  # noqa: E402
from densenet_tf.layers import DenseBlock  # noqa: E402
from densenet_tf.memory_efficient import MemoryEfficientDenseBlock  # noqa: E402
from densenet_tf.model import DenseNet  # noqa: E402
from densenet_tf.precision import op_determinism_enabled, precision_settings  # noqa: E402
from densenet_tf.variants import make_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def run(case):
    return run_case(case, Adapter(case))


def _worker(case_dir, out):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)  # the adapter's own choice
    return subprocess.run(
        [sys.executable, "-m", "densenet_spec.worker", "densenet_tf", str(case_dir), str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_worker_entry_point_with_xla(tmp_path, parity_case, oracle):
    """Train steps under XLA (jit_compile), with recomputed (memory-efficient) dense layers.

    The imagenet stem's max-pool: TF's XLA bridge refuses MaxPoolGrad while op determinism is
    on, so the adapter leaves it off for XLA runs; a fresh process shows that it can.
    """
    case = parity_case("tiny", 32, "float64", 2, memory_efficient=True)
    case = type(case)(**{**vars(case), "options": {"jit_compile": True}})
    out = tmp_path / "results.safetensors"
    proc = _worker(write_case(case, tmp_path / "case"), out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results, info = read_results(out)
    assert info["package"] == "densenet_tf" and info["jit_compile"] is True
    assert info["memory_efficient"] is True
    assert info["precision"]["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert info["precision"]["onednn_set_before_import"] is True
    assert info["precision"]["tf.config.experimental.enable_op_determinism"] is False
    assert info["precision"] == {
        **precision_settings("cpu", "float64", op_determinism=False),
        "onednn_set_before_import": True,
    }
    assert_close(results, oracle("tiny", 32, "float64", 2), "float64")


def test_gpu_precision_settings_turn_tf32_off_and_ops_deterministic():
    """What a gpu run would set, checked without a GPU."""
    settings = precision_settings("gpu", "float32")
    assert settings["tf.config.experimental.enable_tensor_float_32_execution"] is False
    assert settings["tf.config.experimental.enable_op_determinism"] is True
    assert settings["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert precision_settings("gpu", "float64") == settings
    # XLA runs leave op determinism off (TF's XLA bridge has no deterministic MaxPoolGrad)
    xla = precision_settings("gpu", "float32", op_determinism=False)
    assert xla["tf.config.experimental.enable_op_determinism"] is False
    # TF32 is a GPU matter: the cpu settings leave it alone
    assert "tf.config.experimental.enable_tensor_float_32_execution" not in precision_settings(
        "cpu", "float32"
    )
    with pytest.raises(ValueError, match="float16"):
        precision_settings("gpu", "float16")


def _settings_in(info) -> dict:
    """info["precision"] less the one fact that is not a setting: whether TF_ENABLE_ONEDNN_OPTS
    was set before TensorFlow's import (False in this test process, which imports TensorFlow
    first; conftest.py set the variable earlier still)."""
    return {k: v for k, v in info["precision"].items() if k != "onednn_set_before_import"}


def _onednn_as_the_adapter_sets_it():
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0":
        pytest.skip("TF_ENABLE_ONEDNN_OPTS was set otherwise before TensorFlow started")


def test_gpu_environment_applies_exactly_the_gpu_settings(monkeypatch):
    """environment("gpu") with TensorFlow told a GPU is there: each setting goes through the
    precision module's table and is read back (TF32 off changes nothing on CPU; restored
    afterwards)."""
    _onednn_as_the_adapter_sets_it()
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["stand-in GPU"])
    tf32_before = tf.config.experimental.tensor_float_32_execution_enabled()
    try:
        info = environment("gpu", "float32")
        assert tf.config.experimental.tensor_float_32_execution_enabled() is False
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(tf32_before)
    assert _settings_in(info) == precision_settings("gpu", "float32")
    assert info["device_name"] == "/GPU:0"


def test_cpu_precision_settings_are_what_a_cpu_run_records():
    _onednn_as_the_adapter_sets_it()
    case = make_case(get_preset("tiny"), batch=2, image_size=16, quantities=("eval",))
    _, info = run(case)
    assert _settings_in(info) == precision_settings("cpu", "float64")
    assert info["precision"]["tf.config.experimental.enable_op_determinism"] is True


def test_same_padding_mutation_changes_only_the_stem_padding():
    check_same_padding_mutation(run)


def test_unknown_or_inapplicable_mutation_raises():
    check_mutation_errors(run)


def test_op_determinism_is_read_back_through_public_apis():
    """TensorFlow has no public getter: environment() reads it back as a probe (an unseeded
    random op in a fresh graph raises only under op determinism)."""
    _onednn_as_the_adapter_sets_it()
    environment("cpu", "float64")
    assert op_determinism_enabled() is True


# ---------------------------------------------------------------------------------------------
# Variants


def test_plain_variant_is_the_teaching_model_without_xla():
    model = make_model(get_preset("tiny"))
    assert type(model) is DenseNet and model.jit_compile is False
    assert all(type(b) is DenseBlock for b in model.blocks)
    assert {v.dtype for v in model.weights} == {"float32"}


def test_memory_efficient_injects_the_recomputing_dense_block():
    model = make_model(get_preset("tiny"), "fast", True, dtype="float64")
    assert all(type(b) is MemoryEfficientDenseBlock for b in model.blocks)
    assert {v.dtype for v in model.weights} == {"float64"}


def test_fast_variant_is_plain_on_a_cpu_only_machine():
    """fast leaves jit_compile to Keras's "auto" rule: XLA on a GPU, off on CPU-only machines."""
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    model = make_model(get_preset("tiny"), "fast")
    assert type(model) is DenseNet and model.jit_compile is False
    case = make_case(
        get_preset("tiny"), batch=2, image_size=16, quantities=("eval",), variant="fast"
    )
    assert Adapter(case).info["jit_compile"] is False


def test_unknown_variant_raises():
    with pytest.raises(UnknownVariantError, match="unknown variant 'turbo'"):
        make_model(get_preset("tiny"), "turbo")


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["plain", "memory_efficient"])
def test_gradients_report_every_batch_norm_output_for_pieces(memory_efficient):
    """A float32 "pieces" case (densenet_spec.driver): every BatchNorm's output of the gradients'
    forward pass, under its canonical name; the head's, through ReLU and the pool, is the head."""
    case = make_case(
        get_preset("tiny"),
        batch=2,
        image_size=32,
        dtype="float32",
        steps=1,
        memory_efficient=memory_efficient,
        options={"pieces": True},
    )
    results, info = run(case)
    assert "pieces" not in info  # no fallback reason: the adapter reports its pieces
    for mode in ("eval", "train"):
        pieces = {k.split("/", 1)[1] for k in results if k.startswith(f"{mode}_piece/")}
        assert pieces == set(relu_names(case.config))
        head = np.maximum(results[f"{mode}_piece/head.norm"], 0).mean(axis=(2, 3))
        np.testing.assert_allclose(head, results[f"{mode}/head"], rtol=1e-5, atol=1e-6)
