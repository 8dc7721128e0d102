"""densenet_mx.adapter's precision settings (densenet_mx.precision), checked on CPU: what a gpu
run would set, what a cpu run sets and records, and the same_padding self-check mutation."""

import dataclasses
import os

import pytest

mx = pytest.importorskip("mxnet")


from densenet_testing import check_mutation_errors, check_same_padding_mutation  # noqa: E402

from densenet_mx.adapter import Adapter, environment  # noqa: E402
from densenet_mx.precision import precision_settings  # noqa: E402
from densenet_spec import driver  # noqa: E402
from densenet_spec.case import make_case  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.errors import DeviceUnavailableError  # noqa: E402


def run_case(case):
    return driver.run_case(case, Adapter(case))


GPU_VARIABLES = (
    "NVIDIA_TF32_OVERRIDE",
    "MXNET_CUDNN_AUTOTUNE_DEFAULT",
    "MXNET_ENFORCE_DETERMINISM",
)


def test_gpuprecision_settings_turn_tf32_and_autotune_off():
    """What a gpu run would set, checked without a GPU: MXNet reads these from the environment."""
    settings = precision_settings("gpu", "float32")
    assert settings["NVIDIA_TF32_OVERRIDE"] == "0"  # no TF32 in cuBLAS / cuDNN
    assert settings["MXNET_CUDNN_AUTOTUNE_DEFAULT"] == "0"  # one fixed cuDNN algorithm
    assert settings["MXNET_ENFORCE_DETERMINISM"] == "1"
    assert precision_settings("gpu", "float64") == settings
    assert all(isinstance(v, str) for v in settings.values())  # os.environ values
    with pytest.raises(ValueError, match="float16"):
        precision_settings("gpu", "float16")
    with pytest.raises(DeviceUnavailableError, match="mx: no tpu device"):
        precision_settings("tpu", "float32")


def test_gpu_environment_applies_exactly_the_gpu_settings(monkeypatch):
    """environment("gpu") with MXNet told a GPU is there sets exactly those variables (restored
    afterwards; no operator runs in between, so MXNet never reads them here)."""
    for name in GPU_VARIABLES:
        monkeypatch.setenv(name, "stand-in")  # overwritten by environment(), restored on teardown
    monkeypatch.setattr(mx.context, "num_gpus", lambda: 1)
    info = environment("gpu", "float32")
    assert info["precision"] == precision_settings("gpu", "float32")
    assert {k: os.environ[k] for k in GPU_VARIABLES} == precision_settings("gpu", "float32")
    assert info["device_name"] == "gpu(0)"


def test_cpuprecision_settings_are_what_a_cpu_run_records():
    case = make_case(get_preset("tiny"), batch=2, image_size=16, quantities=("eval",))
    _, info = run_case(case)
    assert info["precision"] == {
        **precision_settings("cpu", "float64"),
        "max_pool_eval_grad_correct": True,  # a probe of the setting's effect, not a setting
    }
    assert info["precision"]["MXNET_MKLDNN_ENABLED"] == "0"


@pytest.mark.parametrize("variant", ["plain", "fast"])
@pytest.mark.parametrize("hybridize", [True, False])
def test_same_padding_mutation_changes_only_the_stem_padding(hybridize, variant):
    check_same_padding_mutation(
        lambda case: run_case(dataclasses.replace(case, variant=variant)), {"hybridize": hybridize}
    )


def test_unknown_or_inapplicable_mutation_raises():
    check_mutation_errors(run_case)
