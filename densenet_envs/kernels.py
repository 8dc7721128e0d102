"""Jupyter kernels, one per framework environment: "densenet-parity (torch)", ... (dev.py kernels).

A teacher opens notebooks/torch.ipynb, jax.ipynb, tf.ipynb and mx.ipynb side by side and runs the
same cells, each in its framework's kernel; each notebook's metadata names its kernel,
densenet-parity-<framework>. A kernel runs its environment's own Python (which has this project
installed editable, so no PYTHONPATH is needed) with the registry's variables for that framework
(KERAS_BACKEND for TF). ipykernel comes from requirements/test.txt, installed in every environment.
Standard library only, like the rest of densenet_envs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from densenet_spec.errors import EnvironmentSetupError
from densenet_spec.frameworks import FRAMEWORKS


def kernel_name(framework: str) -> str:
    """The kernelspec name a framework's notebook asks for (its metadata.kernelspec.name)."""
    return f"densenet-parity-{framework}"


def display_name(framework: str) -> str:
    """What Jupyter's kernel menu shows."""
    return f"densenet-parity ({framework})"


def register_kernel(framework: str, python: str | os.PathLike, env: dict | None = None) -> Path:
    """Register `python` (the framework's environment) as the kernel densenet-parity-<framework>
    for this user (in $JUPYTER_DATA_DIR/kernels when that is set); return the kernelspec folder.

    `env` is the process environment for ipykernel's installer (tests point JUPYTER_DATA_DIR at a
    temporary folder); the kernel's own variables come from the registry."""
    cmd = [str(python), "-m", "ipykernel", "install", "--user"]
    cmd += ["--name", kernel_name(framework), "--display-name", display_name(framework)]
    for key, value in FRAMEWORKS[framework].env.items():
        cmd += ["--env", key, value]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
        hint = f"{python} -m pip install -r requirements/test.txt"
        raise EnvironmentSetupError(
            f"registering the {framework} kernel failed ({' '.join(cmd)}); ipykernel comes with "
            f"requirements/test.txt ({hint}):\n{tail}"
        )
    # ipykernel prints "Installed kernelspec NAME in PATH"
    return Path((proc.stdout + proc.stderr).strip().splitlines()[-1].split(" in ", 1)[1])
