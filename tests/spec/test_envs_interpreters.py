"""Bring your own environment (densenet_envs.interpreters) and the CUDA environments: names,
precedence, the named errors for bad interpreters, and the Pythons the project supports."""

import ast
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import densenet_envs as envs
from densenet_envs import interpreters as interp
from densenet_spec.errors import EnvironmentSetupError, UsageError
from densenet_spec.frameworks import FRAMEWORKS

ROOT = envs.ROOT
PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"


def other_python(minor: str) -> str | None:
    """python3.<minor> from PATH or pyenv, if this machine has one."""
    found = shutil.which(f"python{minor}")
    if found and subprocess.run([found, "-V"], capture_output=True).returncode == 0:
        return found
    hits = sorted(PYENV.glob(f"{minor}.*/bin/python"))
    return str(hits[-1]) if hits else None


def fake_python(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "python"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_python_args_parse_and_name_what_is_wrong():
    assert envs.parse_python_args(["torch=/x/python", "jax=rel/python"]) == {
        "torch": "/x/python",
        "jax": os.path.abspath("rel/python"),
    }
    assert envs.parse_python_args(["bench-torchvision=/p"]) == {"bench-torchvision": "/p"}
    for bad, words in [
        ("torch", "FRAMEWORK=/path"),
        ("=/p", "FRAMEWORK=/path"),
        ("pytorch=/p", "unknown name 'pytorch'"),
        ("spec=/p", "runs in the interpreter that runs this command"),
    ]:
        with pytest.raises(UsageError, match=words):
            envs.parse_python_args([bad])
    with pytest.raises(UsageError, match="given twice"):
        envs.parse_python_args(["torch=/a", "torch=/b"])


def test_override_precedence(monkeypatch):
    assert envs.env_variable("torch") == "DENSENET_PYTHON_TORCH"
    assert envs.env_variable("bench-torchvision") == "DENSENET_PYTHON_BENCH_TORCHVISION"
    for fw in FRAMEWORKS:
        monkeypatch.delenv(envs.env_variable(fw), raising=False)
    monkeypatch.delenv("DENSENET_PYTHON_BENCH_TORCHVISION", raising=False)
    assert interp.override_for("torch") is None
    monkeypatch.setenv("DENSENET_PYTHON_TORCH", "/env/python")
    assert interp.override_for("torch") == (Path("/env/python"), "DENSENET_PYTHON_TORCH")
    # --python beats the variable; the peer's environment falls back to its framework's
    assert interp.override_for("torch", {"torch": "/arg"}) == (Path("/arg"), "--python torch")
    hit = interp.override_for("bench-torchvision", {"torch": "/arg"}, "torch")
    assert hit == (Path("/arg"), "--python torch")
    hit = interp.override_for("bench-torchvision", {"bench-torchvision": "/tv", "torch": "/arg"})
    assert hit == (Path("/tv"), "--python bench-torchvision")


def test_every_framework_says_what_its_worker_imports():
    """Adding a framework to the registry without this table fails here, not at a user's."""
    for name, fw in FRAMEWORKS.items():
        assert name in interp.FRAMEWORK_MODULES, name
        assert interp.framework_of(fw.requirements) == name
        assert f"{fw.package}.adapter" in interp.project_modules(name)


def test_missing_framework_is_named_with_the_pip_command():
    """The spec environment has numpy and safetensors but no torch: exactly torch is missing."""
    with pytest.raises(envs.MissingPackagesError) as e:
        envs.check_interpreter(sys.executable, "torch")
    msg = str(e.value)
    assert "torch does not import" in msg and "numpy" not in msg.split("Install")[0]
    pin = interp.requirement_lines("torch")["torch"]
    assert f"{sys.executable} -m pip install '{pin}'" in msg
    assert isinstance(e.value, EnvironmentSetupError)


def test_pip_command_uses_the_device_build_pins():
    cmd = interp.pip_command(Path("/p/python"), "jax", ["jax", "numpy"], device="gpu")
    assert cmd.startswith("/p/python -m pip install 'jax[cuda12]==")
    assert "'numpy==" in cmd
    assert "tensorflow-cpu==" in interp.pip_command(Path("p"), "tf", ["tensorflow"])
    assert "'tensorflow[and-cuda]==" in interp.pip_command(Path("p"), "tf", ["tensorflow"], "gpu")


def test_bad_paths_are_named(tmp_path):
    with pytest.raises(envs.InterpreterNotFoundError, match="no such file"):
        envs.check_interpreter(tmp_path / "nope", "torch")
    with pytest.raises(envs.InterpreterNotFoundError, match="not an executable"):
        envs.check_interpreter(tmp_path, "torch")
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(envs.InterpreterNotFoundError, match="not an executable"):
        envs.check_interpreter(plain, "torch")
    broken = fake_python(tmp_path, "echo 'Illegal instruction' >&2; exit 132")
    with pytest.raises(envs.InterpreterNotFoundError, match="exit 132"):
        envs.check_interpreter(broken, "torch")


def test_python_outside_3_10_to_3_13_is_refused(tmp_path):
    line = '{"python": "2.7.18", "modules": {}}'
    old = fake_python(tmp_path, f"echo 'DENSENET-PROBE {line}'")
    with pytest.raises(envs.UnsupportedPythonError, match="Python 2.7.18; .* 3.10 to 3.13"):
        envs.check_interpreter(old, "torch")
    real2 = other_python("2.7") or shutil.which("python2")
    if real2:  # the probe itself must run under Python 2
        with pytest.raises(envs.UnsupportedPythonError, match="is Python 2.7"):
            envs.check_interpreter(real2, "torch")


def test_gpu_environment_names_and_files():
    assert envs.env_name("torch", device="gpu") == "torch-gpu"
    assert envs.env_name("jax", device="gpu") == "jax-gpu"
    assert envs.env_name("tf", device="gpu") == "tf-gpu"
    assert envs.env_name("bench-torchvision", device="gpu") == "bench-torchvision-gpu"
    assert envs.env_name("torch") == envs.env_name("torch", device="tpu") == "torch"
    assert envs.env_name("spec", device="gpu") == "spec"
    assert envs.requirements_file("torch-gpu").name == "gpu-torch.txt"
    with pytest.raises(EnvironmentSetupError, match="sm_90"):
        envs.env_name("mx", device="gpu")
    with pytest.raises(EnvironmentSetupError, match="unknown environment"):
        envs.requirements_file("nothing-gpu")
    for gpu in envs.gpu_environments():
        base = gpu.removesuffix("-gpu")
        assert base in envs.ENVIRONMENTS or (ROOT / "requirements" / f"{base}.txt").exists()
        pins = interp.requirement_lines(base, device="gpu")
        assert pins and all("==" in spec for spec in pins.values()), gpu


def test_python_for_uses_the_built_environment_or_says_how_to_bring_one(tmp_path, monkeypatch):
    monkeypatch.delenv("DENSENET_PYTHON_TORCH", raising=False)
    monkeypatch.setenv("DENSENET_ENVS", str(tmp_path))
    with pytest.raises(EnvironmentSetupError, match="--python torch=PATH or DENSENET_PYTHON_TORCH"):
        envs.python_for("torch", setup=False)
    (tmp_path / "torch" / "bin").mkdir(parents=True)
    (tmp_path / "torch" / "bin" / "python").symlink_to(sys.executable)
    assert envs.python_for("torch", setup=False) == tmp_path / "torch" / "bin" / "python"
    assert envs.describe_python("torch")["source"] == "built: requirements/torch.txt"
    with pytest.raises(envs.InterpreterNotFoundError):
        envs.python_for("torch", {"torch": str(tmp_path / "nope")}, setup=False)


# What Python 3.11+ added to the standard library: library code must not use it.
NEW_MODULES = {"tomllib", "wsgiref.types"}
NEW_MEMBERS = {
    "typing": {"Self", "Never", "LiteralString", "assert_never", "reveal_type", "override"},
    "datetime": {"UTC"},
    "enum": {"StrEnum", "verify", "ReprEnum"},
    "asyncio": {"TaskGroup", "timeout"},
    "itertools": {"batched"},
    "hashlib": {"file_digest"},
    "contextlib": {"chdir"},
}
NEW_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup"}
NEW_METHODS = {"add_note"}  # BaseException.add_note


def newer_than_3_10(tree: ast.AST) -> list[tuple[int, str]]:
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            hits += [(node.lineno, a.name) for a in node.names if a.name in NEW_MODULES]
        elif isinstance(node, ast.ImportFrom):
            new = NEW_MEMBERS.get(node.module or "", set())
            hits += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if a.name in new]
            if node.module in NEW_MODULES:
                hits.append((node.lineno, node.module))
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.attr in NEW_MEMBERS.get(node.value.id, ()):
                hits.append((node.lineno, f"{node.value.id}.{node.attr}"))
            elif node.attr in NEW_METHODS:
                hits.append((node.lineno, node.attr))
        elif isinstance(node, ast.Name) and node.id in NEW_BUILTINS:
            hits.append((node.lineno, node.id))
    return hits


def test_the_3_10_check_finds_what_it_looks_for():
    code = "import tomllib\nfrom typing import Self\nx = datetime.UTC\nraise ExceptionGroup('', [])"
    found = sorted(name for _, name in newer_than_3_10(ast.parse(code)))
    assert found == ["ExceptionGroup", "datetime.UTC", "tomllib", "typing.Self"]


def library_files() -> list[Path]:
    return sorted(p for p in ROOT.glob("densenet_*/**/*.py")) + [ROOT / "dev.py"]


def test_library_code_uses_nothing_newer_than_python_3_10():
    hits = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in library_files()
        for line, name in newer_than_3_10(ast.parse(path.read_text()))
    ]
    assert not hits, "Python 3.11+ only:\n" + "\n".join(hits)


@pytest.mark.parametrize("minor", ["3.10", "3.12", "3.13"])
def test_other_pythons_compile_the_project_and_import_the_bootstrap(minor):
    """Every supported Python compiles every file and imports the stdlib-only modules (the
    environment builder and registry), and its probe reports what is missing, by name."""
    python = other_python(minor)
    if python is None:
        pytest.skip(f"no Python {minor} on this machine")
    files = [str(p) for p in library_files() + sorted(ROOT.glob("tests/**/*.py"))]
    code = (
        "import sys\n"
        "for f in sys.argv[1:]:\n"
        "    compile(open(f).read(), f, 'exec')\n"
        "import densenet_envs, densenet_spec.frameworks, densenet_spec.errors\n"
        "print(sys.version_info[:2])\n"
    )
    proc = subprocess.run(
        [python, "-c", code, *files],
        capture_output=True,
        text=True,
        env=envs.worker_env("spec"),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tuple(int(v) for v in minor.split(".")))
