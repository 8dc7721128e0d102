"""The environment builder: one virtual environment per framework, from requirements/<name>.txt.

MXNet 1.9.1 needs numpy<1.24 while JAX and TensorFlow need numpy 2, so nothing here assumes two
frameworks share a process: each runs with its own environment's Python and talks through files.
An environment is rebuilt when its requirement files or the base Python change (a stamp file
holds the hash). Every environment has this project installed editable, so each framework's
Python imports densenet_<framework> from any folder (a notebook's, /tmp). Only the standard
library (and the registry, densenet_spec.frameworks, which imports nothing else) is used, so
`python3 dev.py` can call this first. Not part of the framework-free spec: it builds
environments, the spec only describes the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from densenet_envs.interpreters import (  # noqa: F401  (bring your own environment)
    Interpreter,
    InterpreterError,
    InterpreterNotFoundError,
    MissingPackagesError,
    ProjectImportError,
    UnsupportedPythonError,
    check_interpreter,
    check_pythons,
    env_variable,
    parse_python_args,
)
from densenet_spec.errors import EnvironmentSetupError
from densenet_spec.frameworks import FRAMEWORKS

ROOT = Path(__file__).resolve().parent.parent
# "spec" runs the harness, the oracle and the spec tests; then one environment per framework.
ENVIRONMENTS = ("spec",) + tuple(dict.fromkeys(f.requirements for f in FRAMEWORKS.values()))
# On --device gpu a framework runs in <env>-gpu, built from requirements/gpu-<env>.txt.
GPU_SUFFIX = "-gpu"
# Frameworks without a CUDA build for current GPUs: why, for the error --device gpu gives.
NO_GPU_BUILD = {
    "mx": "MXNet's last CUDA wheels (mxnet-cu112/cu117 1.9.1) carry kernels for sm_50-sm_86 "
    "only and no PTX, so they cannot run on Hopper (sm_90) or newer GPUs (tools/README.md); "
    "bring an MXNet built for your GPU with --python mx=PATH",
}


def env_root() -> Path:
    return Path(os.environ.get("DENSENET_ENVS", ROOT / ".venvs"))


def requirements_file(name: str) -> Path:
    """requirements/<name>.txt for the spec and framework environments, and for the benchmark-only
    ones (bench-*: the official peers, built only when densenet-bench asks for them);
    requirements/gpu-<env>.txt for a CUDA environment <env>-gpu (env_name(..., device="gpu"))."""
    if name in FRAMEWORKS:
        name = FRAMEWORKS[name].requirements
    if name.endswith(GPU_SUFFIX):
        path = ROOT / "requirements" / f"gpu-{name.removesuffix(GPU_SUFFIX)}.txt"
        if not path.exists():
            raise EnvironmentSetupError(
                f"unknown environment {name!r}; CUDA environments: {', '.join(gpu_environments())}"
            )
        return path
    path = ROOT / "requirements" / f"{name}.txt"
    if name not in ENVIRONMENTS and not (name.startswith("bench-") and path.exists()):
        raise EnvironmentSetupError(
            f"unknown environment {name!r}; known: {', '.join(ENVIRONMENTS)}"
        )
    return path


def gpu_environments() -> list[str]:
    """The CUDA environments: <env>-gpu for every requirements/gpu-<env>.txt."""
    files = sorted((ROOT / "requirements").glob("gpu-*.txt"))
    return [p.stem.removeprefix("gpu-") + GPU_SUFFIX for p in files]


def env_name(name: str, device: str = "cpu") -> str:
    """The environment a framework (or an environment name) runs in; on device "gpu" its CUDA
    build, <env>-gpu, from requirements/gpu-<env>.txt (EnvironmentSetupError where none exists).
    TPU runs use the CPU environments (JAX's TPU build is not packaged here)."""
    base = FRAMEWORKS[name].requirements if name in FRAMEWORKS else name
    if device != "gpu" or base == "spec" or base.endswith(GPU_SUFFIX):
        return base
    gpu = base + GPU_SUFFIX
    if gpu not in gpu_environments():
        from densenet_envs.interpreters import framework_of

        fw = framework_of(base)
        why = NO_GPU_BUILD.get(fw or "", f"no requirements/gpu-{base}.txt")
        raise EnvironmentSetupError(f"no CUDA environment for {name}: {why}")
    return gpu


def env_python(name: str) -> Path:
    return env_root() / env_name(name) / "bin" / "python"


# Installed into every environment beside its own file: pytest, ipykernel, setuptools.
TEST_REQUIREMENTS = ROOT / "requirements" / "test.txt"


def requirement_files(name: str) -> list[Path]:
    """The files environment `name` is built from: its own, the files it includes (`-r`), and
    requirements/test.txt."""
    files = [requirements_file(name)]
    for path in files:
        for line in path.read_text().splitlines():
            if line.startswith(("-r ", "--requirement ")):
                files.append(path.parent / line.split(maxsplit=1)[1].strip())
    return files + [TEST_REQUIREMENTS]


def _requirements_stamp(name: str) -> str:
    h = hashlib.sha256()
    for path in requirement_files(name):
        h.update(path.read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()


def _project_stamp() -> str:
    """Every environment holds this project, installed editable: the install maps the top-level
    packages that existed when it ran (one added later, as benchmarks/ was, stays unimportable
    outside the checkout) and the metadata of pyproject.toml (console commands, extras)."""
    h = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    h.update(" ".join(project_packages()).encode())
    return h.hexdigest()


def _stamp(name: str) -> str:
    """What .venvs/<name>/.densenet-stamp holds when the environment is current: the hash of its
    requirement files and the Python version, then the hash of the project's install."""
    return f"{_requirements_stamp(name)} {_project_stamp()}"


def project_packages() -> list[str]:
    """The top-level packages in this checkout (directories with an __init__.py)."""
    return sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))


def is_ready(name: str) -> bool:
    name = env_name(name)
    stamp = env_root() / name / ".densenet-stamp"
    return env_python(name).exists() and stamp.exists() and stamp.read_text() == _stamp(name)


def ensure_env(name: str, log=print) -> Path:
    """Create (or reuse) the environment `name` (or a framework's); return its Python.

    Rebuilt from scratch when its requirement files or the base Python change; when only the
    project's packages or pyproject.toml change, the editable install alone is redone."""
    name = env_name(name)
    if is_ready(name):
        return env_python(name)
    path = env_root() / name
    stamp = path / ".densenet-stamp"
    python = str(env_python(name))
    steps = []
    old = stamp.read_text().split() if stamp.exists() else []
    if not (env_python(name).exists() and old[:1] == [_requirements_stamp(name)]):
        log(f"[envs] building {name} environment in {path} from {requirements_file(name).name}")
        if path.exists():
            shutil.rmtree(path)
        steps += [
            [sys.executable, "-m", "venv", str(path)],
            [python, "-m", "pip", "install", "-q", "-r", str(requirements_file(name))]
            + ["-r", str(TEST_REQUIREMENTS)],
        ]
    else:
        log(f"[envs] reinstalling this project in the {name} environment")
    # the project itself, editable: its packages import from any folder (console commands too)
    steps.append(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(ROOT)]
    )
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise EnvironmentSetupError(
                f"building the {name} environment failed at: {' '.join(cmd)}\n{tail}"
            )
    stamp.write_text(_stamp(name))
    log(f"[envs] {name} environment ready")
    return env_python(name)


def ensure_envs(names, log=print) -> dict[str, Path]:
    """Build several environments, a few at a time (downloads overlap, installs are I/O bound)."""
    names = list(dict.fromkeys(env_name(n) for n in names))
    with ThreadPoolExecutor(max_workers=3) as pool:
        pythons = list(pool.map(lambda n: ensure_env(n, log), names))
    return dict(zip(names, pythons))


def worker_env(name: str, *, parity: bool = False) -> dict:
    """Process environment for running code from this repo in environment (or framework) `name`.

    The registry's variables for that framework are set; parity=True adds its parity-only
    settings (compile speed; *_FLAGS variables are appended to, not replaced)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONHASHSEED", "0")
    framework = FRAMEWORKS.get(name)
    if framework is not None:
        env.update(framework.env)
        for key, value in (framework.parity_env if parity else {}).items():
            joined = f"{env.get(key, '')} {value}" if key.endswith("FLAGS") else value
            env[key] = joined.strip()
    return env


def python_for(
    name: str,
    overrides: dict | None = None,
    *,
    setup: bool = True,
    log=print,
    device: str = "cpu",
    framework: str | None = None,
) -> Path:
    """The Python that runs `name` (a framework, or an environment such as bench-torchvision):

    1. an interpreter named by --python NAME=PATH (overrides) or DENSENET_PYTHON_<NAME>, for the
       name itself or for `framework` (the framework it belongs to), checked once, never changed;
    2. else the project's own environment for `device` (torch-gpu for --device gpu), built when
       setup is true. Drop-in for `ensure_env(name) if setup else env_python(name)`."""
    from densenet_envs import interpreters

    framework = framework or interpreters.framework_of(name)
    hit = interpreters.override_for(name, overrides, framework)
    if hit is not None:
        return interpreters.check_interpreter(hit[0], name, device=device, source=hit[1]).python
    env = env_name(name, device)
    python = ensure_env(env, log) if setup else env_python(env)
    if not Path(python).exists():
        raise EnvironmentSetupError(
            f"no {env} environment at {python}: build it (python3 dev.py envs, or leave out "
            f"--no-setup), or name an interpreter with --python {name}=PATH or "
            f"{interpreters.env_variable(name)}=PATH"
        )
    return python


def describe_python(
    name: str,
    overrides: dict | None = None,
    *,
    device: str = "cpu",
    framework: str | None = None,
) -> dict:
    """Where `name`'s Python came from, for a run's info and report: the checked interpreter
    (path, who named it, Python and package versions), or the built environment's path."""
    from densenet_envs import interpreters

    framework = framework or interpreters.framework_of(name)
    hit = interpreters.override_for(name, overrides, framework)
    if hit is not None:
        found = interpreters.check_interpreter(hit[0], name, device=device, source=hit[1])
        return found.to_json()
    env = env_name(name, device)
    return {
        "python": str(env_python(env)),
        "source": f"built: requirements/{requirements_file(env).name}",
    }


if __name__ == "__main__":
    ensure_envs(sys.argv[1:] or ENVIRONMENTS)
