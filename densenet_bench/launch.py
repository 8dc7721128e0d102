"""One process per measurement: start the runner in the target's environment, read its answer.

The runner (densenet_bench.runner) runs with that environment's Python, so peak memory and the
first (compiling) call belong to that measurement alone; the GEMM peak is measured the same way,
in the spec environment. Nothing here imports a framework.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import densenet_envs as envs
from densenet_bench.timing import Request

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MXNET_CPU_WORKER_NTHREADS",
    "TF_NUM_INTRAOP_THREADS",
)


def runner_env(
    env_name: str, keras_backend: str | None, threads: int | None, huge_pages: bool = False
) -> dict[str, str]:
    """The environment's worker variables, plus the Keras backend, thread-count variables and
    the malloc setting."""
    env = envs.worker_env(env_name)
    if huge_pages:
        tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
        env["GLIBC_TUNABLES"] = ":".join([*tunables, HUGE_PAGES_TUNABLE])
    if keras_backend:
        env["KERAS_BACKEND"] = keras_backend
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if threads:
        for var in THREAD_VARIABLES:
            env[var] = str(threads)
    return env


def run_one(
    env_name: str,
    req: Request,
    timeout: int,
    keras_backend: str | None = None,
    huge_pages: bool = False,
    python: Path | None = None,
) -> tuple[dict, list[str]]:
    """Start the runner in environment `env_name` (with `python`, an interpreter named by
    --python, where given); return its answer and the command."""
    python = python or envs.env_python(env_name)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [str(python), "-m", "densenet_bench.runner", json.dumps(req.to_dict()), str(out)]
        env = runner_env(env_name, keras_backend, req.threads, huge_pages)
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=envs.ROOT
            )
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout} s"}, cmd
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            return {"ok": False, "error": f"runner exited {proc.returncode}:\n{tail}"}, cmd
        return json.loads(out.read_text()), cmd


def measure_peak(n: int, threads: int | None) -> dict:
    """The float32 matmul peak, in its own spec-environment process with the runners' threads."""
    cmd = [sys.executable, "-m", "densenet_bench.metrics", str(n), str(threads or 0)]
    env = runner_env("spec", None, threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=envs.ROOT, check=True)
    return json.loads(proc.stdout)
