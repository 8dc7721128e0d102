"""The export-target table (frameworks.EXPORT_TARGETS): a second, small registry beside FRAMEWORKS.

An export target (onnx) runs through the parity harness like a framework, in the environment of
the framework it is exported from, but is no framework package: FRAMEWORKS, and everything that
iterates over it (structure test, environments, benchmarks), never sees it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from densenet_convert.errors import ExportTargetError
from densenet_spec import frameworks, harness
from densenet_spec.case import DEVICES, QUANTITIES, make_case
from densenet_spec.config import get_preset
from densenet_spec.errors import UnknownFrameworkError, UsageError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("target", frameworks.EXPORT_TARGETS.values(), ids=lambda t: t.name)
def test_every_export_target_is_complete_and_not_a_framework(target):
    assert target.name not in frameworks.FRAMEWORKS
    assert target.runs_in in frameworks.FRAMEWORKS
    adapter = ROOT / target.package.replace(".", "/") / "adapter.py"
    assert adapter.is_file(), f"{target.name}: {adapter} is its worker's adapter"
    assert target.quantities and set(target.quantities) <= set(QUANTITIES)
    assert target.dtypes and set(target.dtypes) <= {"float32", "float64"}
    assert set(target.devices) <= set(DEVICES)
    assert set(target.mutations) <= set(harness.MUTATIONS)
    assert target.why
    assert frameworks.worker_framework(target.name) == target.runs_in
    assert frameworks.get_target(target.name) is target


def test_frameworks_keep_their_own_lookups():
    assert frameworks.parse_frameworks("torch, onnx,torch") == ["torch", "onnx"]
    assert frameworks.worker_framework("jax") == "jax"
    assert frameworks.get_target("tf") is frameworks.FRAMEWORKS["tf"]
    with pytest.raises(UnknownFrameworkError, match="unknown framework 'onnx'"):
        frameworks.get_framework("onnx")  # FRAMEWORKS is frameworks only
    with pytest.raises(UnknownFrameworkError, match="known: torch, jax, tf, mx; export targets"):
        frameworks.parse_frameworks("torch,tflite")


def test_onnx_is_refused_what_it_cannot_do_with_a_named_error():
    check = harness.check_targets
    check(["torch", "onnx"], ("eval",), "float32", "cpu")  # what it can do
    check(["torch"], QUANTITIES, "float64", "gpu")  # frameworks are not checked here
    with pytest.raises(ExportTargetError, match=r"quantities train,grad \(it computes eval\)"):
        check(["onnx"], ("eval", "train", "grad"), "float32", "cpu")
    with pytest.raises(ExportTargetError, match="dtype float64.*give --dtype float32.*Conv"):
        check(["onnx"], ("eval",), "float64", "cpu")
    with pytest.raises(ExportTargetError, match="device gpu"):
        check(["onnx"], ("eval",), "float32", "gpu")
    with pytest.raises(ExportTargetError, match="--mutate onnx:grad_scale .it honours: bn_eps"):
        check(["onnx"], ("eval",), "float32", "cpu", {"onnx": "grad_scale"})
    assert issubclass(ExportTargetError, UsageError)


def test_the_harness_refuses_before_any_worker_runs(tmp_path):
    case = make_case(get_preset("tiny"), image_size=32, quantities=("eval", "grad"))
    with pytest.raises(ExportTargetError, match="quantities grad"):
        harness.run_parity(case, ["onnx"], workdir=tmp_path, setup=False, log=lambda *a: None)
    assert not (tmp_path / "case").exists()


def test_an_export_targets_worker_runs_in_its_frameworks_environment(monkeypatch, tmp_path):
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text("")
    asked = []

    def env_python(name):
        asked.append(name)
        return python

    monkeypatch.setattr(harness.envs, "env_python", env_python)
    cmd, env = harness.worker_command("onnx", tmp_path / "case", tmp_path / "out", False, print)
    assert asked == ["torch"]
    assert cmd[:4] == [str(python), "-m", "densenet_spec.worker", "densenet_convert.onnx_target"]
