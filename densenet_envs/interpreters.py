"""Bring your own environment: run a framework's worker with a Python the user already has.

`--python torch=/opt/conda/bin/python` (repeatable) or DENSENET_PYTHON_TORCH names an interpreter
for one framework (or for one environment, e.g. bench-torchvision); the project then uses it
instead of building .venvs/<env>. Before anything runs, the interpreter is probed in a subprocess,
never modified: it runs, it is Python 3.10 to 3.13, the framework, numpy and safetensors import
there (versions recorded), and so does this project with PYTHONPATH set as worker_env sets it.
Otherwise a named error says what is missing and the pip command that would fix it.

Standard library and densenet_spec's registry and errors only, like the rest of densenet_envs.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from densenet_spec.errors import EnvironmentSetupError, UsageError
from densenet_spec.frameworks import FRAMEWORKS

SUPPORTED_PYTHONS = ((3, 10), (3, 13))  # oldest and newest minor version the project runs on
PROBE_TIMEOUT_S = 300  # importing TensorFlow from a cold network file system can take minutes
ENV_PREFIX = "DENSENET_PYTHON_"

# What a worker imports beyond the standard library and this project: import name -> the
# distributions that provide it, in the order their pins are looked up in the requirements file.
COMMON_MODULES = {"numpy": ("numpy",), "safetensors": ("safetensors",)}
FRAMEWORK_MODULES = {
    "torch": {"torch": ("torch",)},
    "jax": {"jax": ("jax",), "jaxlib": ("jaxlib",), "flax": ("flax",), "optax": ("optax",)},
    "tf": {"tensorflow": ("tensorflow", "tensorflow-cpu"), "keras": ("keras",)},
    "mx": {"mxnet": ("mxnet", "mxnet-cu112", "mxnet-cu117")},
}
# Benchmark-only environments add the official peer's package.
ENV_MODULES = {
    "bench-torchvision": {"torchvision": ("torchvision",)},
    "bench-keras-jax": {"keras": ("keras",)},
}


class InterpreterError(EnvironmentSetupError):
    """An interpreter named with --python or DENSENET_PYTHON_<NAME> cannot run a worker."""


class InterpreterNotFoundError(InterpreterError):
    """The path does not exist, is not an executable file, or does not start."""


class UnsupportedPythonError(InterpreterError):
    """The interpreter runs, but its Python is outside 3.10-3.13."""


class MissingPackagesError(InterpreterError):
    """The framework, numpy or safetensors does not import there."""


class ProjectImportError(InterpreterError):
    """Every package imports, but this project's worker modules do not."""


@dataclass(frozen=True)
class Interpreter:
    """A checked interpreter: where it is, who named it, and what it runs."""

    name: str  # the framework or environment it runs
    python: Path
    source: str  # "--python torch", "DENSENET_PYTHON_TORCH", or "built: .venvs/torch"
    python_version: str = ""
    versions: dict = field(default_factory=dict)  # import name -> __version__

    def to_json(self) -> dict:
        return {
            "python": str(self.python),
            "source": self.source,
            "python_version": self.python_version,
            "versions": dict(self.versions),
        }


def env_variable(name: str) -> str:
    """DENSENET_PYTHON_TORCH for torch, DENSENET_PYTHON_BENCH_TORCHVISION for bench-torchvision."""
    return ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", name.upper())


def known_names() -> list[str]:
    """What --python accepts: every framework and every framework or benchmark environment."""
    from densenet_envs import ENVIRONMENTS, ROOT

    bench = sorted(p.stem for p in (ROOT / "requirements").glob("bench-*.txt"))
    return list(dict.fromkeys([*FRAMEWORKS, *(e for e in ENVIRONMENTS if e != "spec"), *bench]))


def parse_python_args(items) -> dict[str, str]:
    """--python NAME=PATH values (repeatable) as {name: path}; UsageError names a bad one."""
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise UsageError(f"--python {item!r}: expected FRAMEWORK=/path/to/python")
        if name == "spec":
            raise UsageError(
                "--python spec=...: the spec (harness and oracle) runs in the interpreter that "
                "runs this command; start the command with that Python instead"
            )
        if name not in known_names():
            raise UsageError(
                f"--python {item!r}: unknown name {name!r}; known: {', '.join(known_names())}"
            )
        if name in out and out[name] != path:
            raise UsageError(f"--python {name}= is given twice ({out[name]} and {path})")
        # absolute, not resolved: a venv's bin/python is a link to the base interpreter
        out[name] = os.path.abspath(os.path.expanduser(path))
    return out


def override_for(
    name: str, overrides: dict | None = None, framework: str | None = None
) -> tuple[Path, str] | None:
    """(interpreter, where it was named) for `name`, or None to use the built environment.

    --python beats the environment variable; the name itself (bench-torchvision) beats the
    framework it belongs to (torch), so one --python torch=... serves ours and the peer."""
    overrides = overrides or {}
    names = [name] + ([framework] if framework and framework != name else [])
    for n in names:
        if n in overrides:
            return Path(overrides[n]), f"--python {n}"
    for n in names:
        value = os.environ.get(env_variable(n), "").strip()
        if value:
            return Path(os.path.abspath(os.path.expanduser(value))), env_variable(n)
    return None


def framework_of(name: str) -> str | None:
    """The framework a framework or environment name runs (None for spec and unknown names)."""
    if name in FRAMEWORKS:
        return name
    base = name.removesuffix("-gpu")
    for fw in FRAMEWORKS.values():
        if fw.requirements == base:
            return fw.name
    return {"bench-torchvision": "torch", "bench-keras-jax": "jax"}.get(base)


def required_modules(name: str) -> dict[str, tuple[str, ...]]:
    """Import name -> distributions, for what a worker of `name` imports."""
    base = name.removesuffix("-gpu")
    fw = framework_of(name)
    return {
        **(FRAMEWORK_MODULES.get(fw, {}) if fw else {}),
        **ENV_MODULES.get(base, {}),
        **COMMON_MODULES,
    }


def project_modules(name: str) -> list[str]:
    """This project's modules a worker of `name` imports: parity worker, training driver, the
    framework's adapter (which imports the model, weights and train files)."""
    fw = framework_of(name)
    mods = ["densenet_spec.worker", "densenet_spec.training"]
    if fw:
        mods.append(f"{FRAMEWORKS[fw].package}.adapter")
    if name.removesuffix("-gpu").startswith("bench-") or fw:
        mods.append("densenet_bench.runner")
    return mods


def requirement_lines(name: str, device: str = "cpu") -> dict[str, str]:
    """Distribution name -> the whole requirement ("jax[cuda12]==0.10.2") from the file the
    project would build `name`'s environment from."""
    from densenet_envs import env_name, requirements_file

    try:
        path = requirements_file(env_name(name, device=device))
    except EnvironmentSetupError:
        path = requirements_file(env_name(name))
    out = {}
    for line in path.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec.startswith("-"):  # pip options such as "-r report.txt"
            continue
        m = re.match(r"([A-Za-z0-9_.\-]+)", spec)
        if m:
            out[m.group(1).lower().replace("_", "-")] = spec
    return out


def pip_command(python: Path, name: str, modules, device: str = "cpu") -> str:
    """The pip command that installs `modules` (import names) with the project's pins."""
    pins = requirement_lines(name, device)
    table = required_modules(name)
    specs = []
    for mod in modules:
        dists = table.get(mod, (mod,))
        spec = next((pins[d] for d in dists if d in pins), dists[0])
        specs.append(f"'{spec}'" if any(c in spec for c in "[]<>=") else spec)
    return f"{python} -m pip install {' '.join(dict.fromkeys(specs))}"


# Runs under whatever the interpreter is, Python 2 included: no f-strings, no annotations.
PROBE = r"""
import json, sys
out = {"python": "%d.%d.%d" % tuple(sys.version_info[:3]), "modules": {}}
if sys.version_info[:2] >= (3, 10):
    import importlib
    for name in sys.argv[1:]:
        try:
            module = importlib.import_module(name)
            out["modules"][name] = [True, str(getattr(module, "__version__", "") or "")]
        except BaseException as e:
            out["modules"][name] = [False, "%s: %s" % (type(e).__name__, e)]
sys.stdout.write("\nDENSENET-PROBE " + json.dumps(out) + "\n")
"""


def probe(python: Path, modules, env: dict, timeout: float = PROBE_TIMEOUT_S) -> dict:
    """Import `modules` in `python` (a subprocess); {"python": "3.12.1", "modules": {name:
    [ok, version or error]}}. InterpreterNotFoundError where it does not run the probe."""
    if not python.exists():
        raise InterpreterNotFoundError(f"{python}: no such file")
    if python.is_dir() or not os.access(python, os.X_OK):
        raise InterpreterNotFoundError(f"{python}: not an executable file")
    try:
        proc = subprocess.run(
            [str(python), "-c", PROBE, *modules],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except OSError as e:
        raise InterpreterNotFoundError(f"{python}: does not start ({e.strerror or e})") from None
    except subprocess.TimeoutExpired:
        raise InterpreterNotFoundError(
            f"{python}: importing {', '.join(modules)} took over {timeout:g} s"
        ) from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("DENSENET-PROBE ")]
    if not lines:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise InterpreterNotFoundError(
            f"{python}: is not a Python this project can run (exit {proc.returncode}):\n{tail}"
        )
    return json.loads(lines[-1][len("DENSENET-PROBE ") :])


@functools.cache
def _check_cached(python: str, name: str, device: str, source: str, pythonpath: str) -> Interpreter:
    from densenet_envs import worker_env

    path = Path(python)
    fw = framework_of(name)
    third_party = list(required_modules(name))
    found = probe(path, [*third_party, *project_modules(name)], worker_env(fw or name))
    version = found["python"]
    major_minor = tuple(int(v) for v in version.split(".")[:2])
    low, high = SUPPORTED_PYTHONS
    if not low <= major_minor <= high:
        raise UnsupportedPythonError(
            f"{path} ({source}) is Python {version}; this project runs on Python "
            f"{low[0]}.{low[1]} to {high[0]}.{high[1]}"
        )
    mods = found["modules"]
    missing = [m for m in third_party if not mods[m][0]]
    if missing:
        why = "; ".join(f"{m}: {mods[m][1]}" for m in missing)
        raise MissingPackagesError(
            f"{path} ({source}) cannot run the {name} worker: {', '.join(missing)} "
            f"{'does' if len(missing) == 1 else 'do'} not import ({why}). Install with:\n"
            f"  {pip_command(path, name, missing, device)}\n"
            "(the project never installs into an interpreter it did not build)"
        )
    broken = [m for m in project_modules(name) if not mods[m][0]]
    if broken:
        why = "; ".join(f"{m}: {mods[m][1]}" for m in broken)
        raise ProjectImportError(
            f"{path} ({source}): every package imports, but this project does not ({why}). "
            f"PYTHONPATH was {pythonpath!r}"
        )
    versions = {m: mods[m][1] for m in third_party}
    return Interpreter(name, path, source, version, versions)


def check_interpreter(
    python: Path | str, name: str, *, device: str = "cpu", source: str = "--python"
) -> Interpreter:
    """Probe `python` for running `name`'s worker (checked once per process and argument set);
    an InterpreterError subclass says what is wrong. Never installs anything."""
    from densenet_envs import worker_env

    pythonpath = worker_env(framework_of(name) or name).get("PYTHONPATH", "")
    return _check_cached(str(python), name, device, source, pythonpath)


def check_pythons(names, overrides: dict | None = None, *, device: str = "cpu") -> dict:
    """Check, up front, every interpreter named (by --python or environment variable) for the
    frameworks or environments `names`: {name: Interpreter}; raises the first InterpreterError.
    Names without an override are left to the built environments (not in the answer)."""
    out = {}
    for name in dict.fromkeys(names):
        hit = override_for(name, overrides, framework_of(name))
        if hit is not None:
            out[name] = check_interpreter(hit[0], name, device=device, source=hit[1])
    return out


def unused_overrides(overrides: dict, names) -> list[str]:
    """--python names that none of `names` (the run's frameworks or environments) would use."""
    used = set(names) | {framework_of(n) for n in names}
    return [n for n in overrides if n not in used]
