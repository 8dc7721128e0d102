"""densenet_mx.worker's precision settings, checked on CPU: what a gpu run would set, what a cpu
run sets and records, and the same_padding self-check mutation."""

import os

import pytest

mx = pytest.importorskip("mxnet")


from densenet_spec.case import make_case  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.errors import DeviceUnavailableError  # noqa: E402
from densenet_spec.testing import check_mutation_errors, check_same_padding_mutation  # noqa: E402
from densenet_mx.worker import _precision_settings, environment, run_case  # noqa: E402

GPU_VARIABLES = (
    "NVIDIA_TF32_OVERRIDE",
    "MXNET_CUDNN_AUTOTUNE_DEFAULT",
    "MXNET_ENFORCE_DETERMINISM",
)


def test_gpu_precision_settings_turn_tf32_and_autotune_off():
    """What a gpu run would set, checked without a GPU: MXNet reads these from the environment."""
    settings = _precision_settings("gpu", "float32")
    assert settings["NVIDIA_TF32_OVERRIDE"] == "0"  # no TF32 in cuBLAS / cuDNN
    assert settings["MXNET_CUDNN_AUTOTUNE_DEFAULT"] == "0"  # one fixed cuDNN algorithm
    assert settings["MXNET_ENFORCE_DETERMINISM"] == "1"
    assert _precision_settings("gpu", "float64") == settings
    assert all(isinstance(v, str) for v in settings.values())  # os.environ values
    with pytest.raises(ValueError, match="float16"):
        _precision_settings("gpu", "float16")
    with pytest.raises(DeviceUnavailableError, match="mx: no tpu device"):
        _precision_settings("tpu", "float32")


def test_gpu_environment_applies_exactly_the_gpu_settings(monkeypatch):
    """environment("gpu") with MXNet told a GPU is there sets exactly those variables (restored
    afterwards; no operator runs in between, so MXNet never reads them here)."""
    for name in GPU_VARIABLES:
        monkeypatch.setenv(name, "stand-in")  # overwritten by environment(), restored on teardown
    monkeypatch.setattr(mx.context, "num_gpus", lambda: 1)
    info = environment("gpu", "float32")
    assert info["precision"] == _precision_settings("gpu", "float32")
    assert {k: os.environ[k] for k in GPU_VARIABLES} == _precision_settings("gpu", "float32")
    assert info["device_name"] == "gpu(0)"


def test_cpu_precision_settings_are_what_a_cpu_run_records():
    case = make_case(get_preset("tiny"), batch=2, image_size=16, quantities=("eval",))
    _, info = run_case(case)
    assert info["precision"] == {
        **_precision_settings("cpu", "float64"),
        "max_pool_eval_grad_correct": True,  # a probe of the setting's effect, not a setting
    }
    assert info["precision"]["MXNET_MKLDNN_ENABLED"] == "0"


@pytest.mark.parametrize("hybridize", [True, False])
def test_same_padding_mutation_changes_only_the_stem_padding(hybridize):
    check_same_padding_mutation(run_case, {"hybridize": hybridize})


def test_unknown_or_inapplicable_mutation_raises():
    check_mutation_errors(run_case)