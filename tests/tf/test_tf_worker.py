"""The real worker entry point, as the harness runs it: a fresh process, files in and out."""

import os

os.environ["KERAS_BACKEND"] = "tensorflow"

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("tensorflow")

from densenet_spec.case import read_results, write_case  # noqa: E402
from densenet_spec.compare import assert_close  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _worker(case_dir, out):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)  # the worker's own choice
    return subprocess.run(
        [sys.executable, "-m", "densenet_spec.worker", "tf", str(case_dir), str(out)],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )


def test_worker_entry_point_with_xla(tmp_path, parity_case, oracle):
    """Train steps under XLA (jit_compile), with recomputed (memory-efficient) dense layers.

    The imagenet stem's max-pool: TF's XLA bridge refuses MaxPoolGrad while op determinism is
    on, so the worker leaves it off for XLA runs; a fresh process shows that it can.
    """
    case = parity_case("tiny", 32, "float64", 2, memory_efficient=True)
    case = type(case)(**{**vars(case), "options": {"jit_compile": True}})
    out = tmp_path / "results.safetensors"
    proc = _worker(write_case(case, tmp_path / "case"), out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results, info = read_results(out)
    assert info["framework"] == "tf" and info["jit_compile"] is True
    assert info["memory_efficient"] is True
    assert info["precision"]["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert info["precision"]["onednn_set_before_import"] is True
    assert info["precision"]["op_determinism"] is False
    assert_close(results, oracle("tiny", 32, "float64", 2), "float64")
