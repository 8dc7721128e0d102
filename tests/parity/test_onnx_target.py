"""The `onnx` export target in the parity report: our torch DenseNet exported with torch.onnx,
its graph checked, run in onnxruntime (eval mode, float32), against the oracle and pairwise.

onnxruntime's CPU provider has no float64 Conv or AveragePool kernel (measured, onnxruntime
1.32: densenet_convert.onnx_export.FLOAT64_MISSING), so the target runs float32 only, with the
harness's derived float32 bounds. The target runs in the torch environment (onnx, onnxruntime
and onnxscript are in requirements/torch.txt).

The `onnx-mx` target is the same for our MXNet DenseNet exported with MXNet's own exporter
(densenet_convert.onnx_export.export_mx_onnx, every stage a graph output), run in the mx
environment (onnx 1.17.0 and onnxruntime 1.32.0 in requirements/mx.txt); its graph is stamped
with that onnx's newest opset (22).
"""

from __future__ import annotations

import functools
import json
import subprocess

import pytest
from densenet_testing import spec_command

import densenet_envs as envs
from densenet_spec import cli, harness
from densenet_spec.case import make_case
from densenet_spec.config import get_preset
from densenet_spec.harness import run_parity
from densenet_spec.params import param_specs, stage_names
from densenet_spec.tolerances import FLOAT32_FLOOR

TINY = get_preset("tiny")


@pytest.fixture
def require_onnx(require_envs):
    require_envs("torch")
    probe = [str(envs.env_python("torch")), "-c", "import onnx, onnxruntime, onnxscript"]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("onnx, onnxruntime or onnxscript is missing from the torch environment")


@functools.cache
def _mx_env_exports() -> bool:
    """The mx environment imports MXNet's exporter, onnx and onnxruntime (probed once: ~4 s)."""
    probe = [str(envs.env_python("mx")), "-c", "import onnx, onnxruntime, mxnet.onnx"]
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.fixture
def require_onnx_mx(require_envs):
    require_envs("mx")
    if not _mx_env_exports():
        pytest.skip("onnx, onnxruntime or mxnet.onnx is missing from the mx environment")


def parity(*args, timeout=900):
    return spec_command("densenet_spec.cli", *args, "--no-setup", timeout=timeout)


def test_torch_and_onnx_pass_eval_in_float32_with_derived_bounds(tmp_path, require_onnx):
    out, folder = tmp_path / "r.json", tmp_path / "report"
    proc = parity(
        "--preset", "tiny", "--frameworks", "torch,onnx", "--quantities", "eval",
        "--dtype", "float32", "--image-size", "32", "--json", out, "--report", folder,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PARITY OK" in proc.stdout and "onnx: ONNX Runtime" in proc.stdout
    assert "opset 18" in proc.stdout
    report = json.loads(out.read_text())
    pairs = {(p["a"], p["b"]): p for p in report["pairs"]}
    assert list(pairs) == [("torch", "oracle"), ("onnx", "oracle"), ("torch", "onnx")]
    keys = [f"eval/{s}" for s in stage_names(TINY)] + ["loss/eval"]  # every stage
    for pair in pairs.values():
        assert pair["ok"] and sorted(c["key"] for c in pair["comparisons"]) == sorted(keys)
        for c in pair["comparisons"]:
            # float32 bounds: the floor, or safety x the float32 oracle's own error
            assert FLOAT32_FLOOR["eval"] <= c["bound"] <= 1e-3 and c["error"] <= c["bound"], c
    info = report["frameworks"]["onnx"]["info"]
    assert info["opset"] == info["versions"]["opset"] == info["graph"]["opset"] == 18
    assert info["package"] == "densenet_convert.onnx_target" and info["dtype"] == "float32"
    num_bn = sum(s.kind == "bn_running_var" for s in param_specs(TINY))
    assert info["graph"]["nodes"]["BatchNormalization"] == num_bn
    assert info["graph"]["bn_epsilons"] == pytest.approx([TINY.bn_eps], rel=1e-6)
    assert "float64" in info["float64"] and "Conv" in info["float64"]
    assert "opset 18" in (folder / "parity.md").read_text()


def test_what_onnx_cannot_do_is_refused_up_front(capsys):
    for argv, words in (
        (["--frameworks", "torch,onnx"], "onnx cannot run quantities train,grad,step"),
        (["--frameworks", "onnx", "--quantities", "eval"], "dtype float64 (it runs float32)"),
        (["--frameworks", "onnx", "--quantities", "eval", "--dtype", "float32", "--device",
          "gpu"], "device gpu"),
        (["--frameworks", "onnx", "--quantities", "eval", "--dtype", "float32", "--mutate",
          "onnx:same_padding"], "--mutate onnx:same_padding (it honours: bn_eps)"),
    ):  # fmt: skip
        assert cli.main([*argv, "--preset", "tiny", "--no-setup"]) == 2
        out = " ".join(capsys.readouterr().out.split())
        assert "error: ExportTargetError: " in out and words in out, out
        assert "running" not in out  # nothing ran


def test_a_broken_export_fails_the_run_with_the_reason(tmp_path, require_onnx):
    """torch.onnx's own optimizer (its default, off here) folds each conv -> BatchNorm pair into
    the convolution: the logits stay close, but the graph no longer keeps every epsilon, and
    check_graph fails the run, naming why."""
    case = make_case(
        TINY, image_size=32, dtype="float32", quantities=("eval",), options={"onnx_optimize": True}
    )
    report = run_parity(case, ["onnx"], setup=False, log=lambda *a: None)
    run = report.runs["onnx"]
    assert not run.ok and not report.ok
    assert "OnnxGraphError" in run.error
    assert "BatchNormalization nodes, the spec has 11" in run.error


def test_onnx_bn_eps_mutation_is_caught_where_it_is_made(tmp_path, require_onnx):
    """--mutate onnx:bn_eps exports the model with BatchNorm epsilon 1e-3: the graph agrees with
    its (mutated) config, the numbers do not agree with the oracle, from the stem on."""
    proc = parity(
        "--preset", "tiny", "--frameworks", "onnx", "--quantities", "eval", "--dtype", "float32",
        "--image-size", "32", "--mutate", "onnx:bn_eps",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SELF-CHECK OK" in proc.stdout and "onnx and oracle part at eval: stem" in proc.stdout


@pytest.mark.parametrize("preset", ["tiny", "d2l"])
def test_mx_and_onnx_mx_pass_eval_in_float32_with_derived_bounds(tmp_path, require_onnx_mx, preset):
    out = tmp_path / "r.json"
    proc = parity(
        "--preset", preset, "--frameworks", "mx,onnx-mx", "--quantities", "eval",
        "--dtype", "float32", "--image-size", "32", "--json", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PARITY OK" in proc.stdout and "onnx-mx: ONNX Runtime (mx.onnx" in proc.stdout
    report = json.loads(out.read_text())
    config = get_preset(preset)
    pairs = {(p["a"], p["b"]): p for p in report["pairs"]}
    assert list(pairs) == [("mx", "oracle"), ("onnx-mx", "oracle"), ("mx", "onnx-mx")]
    keys = [f"eval/{s}" for s in stage_names(config)] + ["loss/eval"]  # every stage
    for pair in pairs.values():
        assert pair["ok"] and sorted(c["key"] for c in pair["comparisons"]) == sorted(keys)
        for c in pair["comparisons"]:
            assert FLOAT32_FLOOR["eval"] <= c["bound"] <= 1e-3 and c["error"] <= c["bound"], c
    info = report["frameworks"]["onnx-mx"]["info"]
    # the opset MXNet's exporter stamps (the installed onnx's newest: 22 for onnx 1.17.0)
    assert info["opset"] == info["versions"]["opset"] == info["graph"]["opset"] >= 13
    assert f"opset {info['opset']}" in proc.stdout
    assert info["package"] == "densenet_convert.onnx_mx_target" and info["dtype"] == "float32"
    assert info["versions"]["mxnet"].startswith("1.9")
    num_bn = sum(s.kind == "bn_running_var" for s in param_specs(config))
    assert info["graph"]["nodes"]["BatchNormalization"] == num_bn
    assert info["graph"]["bn_epsilons"] == pytest.approx([config.bn_eps], rel=1e-6)


def test_onnx_mx_bn_eps_mutation_is_caught_where_it_is_made(require_onnx_mx):
    """--mutate onnx-mx:bn_eps exports MXNet's model with BatchNorm epsilon 1e-3: the graph
    agrees with its (mutated) config, the numbers do not agree with the oracle, from the stem on."""
    proc = parity(
        "--preset", "tiny", "--frameworks", "onnx-mx", "--quantities", "eval", "--dtype",
        "float32", "--image-size", "32", "--mutate", "onnx-mx:bn_eps",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SELF-CHECK OK" in proc.stdout and "onnx-mx and oracle part at eval: stem" in proc.stdout
    assert "epsilon 0.001" in proc.stdout  # the mutated epsilon reached the exported graph


def test_what_onnx_mx_cannot_do_is_refused_up_front(capsys):
    for argv, words in (
        (["--frameworks", "mx,onnx-mx"], "onnx-mx cannot run quantities train,grad,step"),
        (["--frameworks", "onnx-mx", "--quantities", "eval"], "dtype float64 (it runs float32)"),
        (["--frameworks", "onnx-mx", "--quantities", "eval", "--dtype", "float32", "--mutate",
          "onnx-mx:same_padding"], "--mutate onnx-mx:same_padding (it honours: bn_eps)"),
    ):  # fmt: skip
        assert cli.main([*argv, "--preset", "tiny", "--no-setup"]) == 2
        out = " ".join(capsys.readouterr().out.split())
        assert "error: ExportTargetError: " in out and words in out, out
        assert "running" not in out  # nothing ran


def test_onnx_mx_runs_in_the_mx_environment(monkeypatch, tmp_path):
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text("")
    asked = []

    def env_python(name):
        asked.append(name)
        return python

    monkeypatch.setattr(harness.envs, "env_python", env_python)
    cmd, _ = harness.worker_command("onnx-mx", tmp_path / "case", tmp_path / "out", False, print)
    assert asked == ["mx"]
    assert cmd[1:4] == ["-m", "densenet_spec.worker", "densenet_convert.onnx_mx_target"]
