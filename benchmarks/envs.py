"""Benchmark-only environments: .venvs/bench-<name>, built from requirements/bench-<name>.txt.

The recipe is densenet_spec.envs's (a venv, `pip install -r`, a stamp holding the hash of the
requirements file and the Python version, the same stamp file), so an environment built here is
reused as is once densenet_spec.envs accepts bench-* names; ensure_env() then defers to it. These
environments are built only for `densenet-bench --peers` (or --env); no test needs them.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from densenet_spec import envs
from densenet_spec.errors import EnvironmentSetupError

BENCH_ENVIRONMENTS = ("bench-torchvision", "bench-keras-jax")


def requirements_file(name: str) -> Path:
    if name not in BENCH_ENVIRONMENTS:
        raise EnvironmentSetupError(
            f"unknown benchmark environment {name!r}; known: {', '.join(BENCH_ENVIRONMENTS)}"
        )
    return envs.ROOT / "requirements" / f"{name}.txt"


def _stamp(name: str) -> str:
    h = hashlib.sha256(requirements_file(name).read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()


def is_ready(name: str) -> bool:
    stamp = envs.env_root() / name / ".densenet-stamp"
    return envs.env_python(name).exists() and stamp.exists() and stamp.read_text() == _stamp(name)


def _spec_knows(name: str) -> bool:
    try:
        envs.requirements_file(name)
    except EnvironmentSetupError:
        return False
    return True


def ensure_env(name: str, log=print) -> Path:
    """Create (or reuse) environment `name` (a framework's or a bench-* one); return its Python."""
    if name not in BENCH_ENVIRONMENTS or _spec_knows(name):
        return envs.ensure_env(name, log)
    if is_ready(name):
        return envs.env_python(name)
    path = envs.env_root() / name
    log(f"[envs] building {name} environment in {path} from {requirements_file(name).name}")
    if path.exists():
        shutil.rmtree(path)
    python = str(envs.env_python(name))
    for cmd in (
        [sys.executable, "-m", "venv", str(path)],
        [python, "-m", "pip", "install", "-q", "-r", str(requirements_file(name))],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise EnvironmentSetupError(
                f"building the {name} environment failed at: {' '.join(cmd)}\n{tail}"
            )
    (path / ".densenet-stamp").write_text(_stamp(name))
    log(f"[envs] {name} environment ready")
    return envs.env_python(name)


def worker_env(name: str, keras_backend: str | None = None, threads: int | None = None) -> dict:
    """densenet_spec.envs.worker_env, plus the Keras backend and thread-count variables."""
    env = envs.worker_env(name)
    if keras_backend:
        env["KERAS_BACKEND"] = keras_backend
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MXNET_CPU_WORKER_NTHREADS", "TF_NUM_INTRAOP_THREADS"):
            env[var] = str(threads)
    return env
