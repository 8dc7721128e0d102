"""The `onnx` export target in the parity report: our torch DenseNet exported with torch.onnx,
its graph checked, run in onnxruntime (eval mode, float32), against the oracle and pairwise.

onnxruntime's CPU provider has no float64 Conv or AveragePool kernel (measured, onnxruntime
1.32: densenet_convert.onnx_export.FLOAT64_MISSING), so the target runs float32 only, with the
harness's derived float32 bounds. The target runs in the torch environment (onnx, onnxruntime
and onnxscript are in requirements/torch.txt).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import densenet_envs as envs
from densenet_spec import cli
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


def parity(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "densenet_spec.cli", *map(str, args), "--no-setup"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=envs.worker_env("spec"),
    )


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
