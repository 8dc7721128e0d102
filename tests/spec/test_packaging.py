"""Issue 23: one source of truth for versions, and the project installed in every environment.

`pip install "densenet-parity[torch]"` installs requirements/torch.txt, the file the torch
environment (and so tests/torch) is built from; [all] is torch + jax + tf (numpy 2), [mx] stands
alone (numpy<1.24). Test-only packages live in requirements/test.txt, which the builder adds to
every environment. Every environment has this project installed editable, so each framework's
Python imports its package from any folder."""

import os
import re
import subprocess
from importlib.metadata import requires
from pathlib import Path

import pytest
import tomllib

import densenet_envs as envs
from densenet_spec.frameworks import FRAMEWORKS

ROOT = envs.ROOT
REQUIREMENTS = ROOT / "requirements"
EXTRAS = {
    "torch": ["torch.txt"],
    "jax": ["jax.txt"],
    "tf": ["tf.txt"],
    "mx": ["mx.txt"],
    "all": ["torch.txt", "jax.txt", "tf.txt"],
    "report": ["report.txt"],
    "test": ["test.txt"],
}
TEST_ONLY = {"pytest", "hypothesis", "ipykernel", "setuptools"}


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower().replace("_", "-")


def _lines(*files: str) -> list[str]:
    """The requirement lines of requirements/<file>s, as setuptools reads them for the extras."""
    out = []
    for file in files:
        for line in (REQUIREMENTS / file).read_text().splitlines():
            if line.strip() and not line.strip().startswith("#"):
                out.append(line.strip())
    return out


def test_the_extras_are_read_from_the_requirement_files():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "optional-dependencies" in project["project"]["dynamic"]
    assert "optional-dependencies" not in project["project"]  # setuptools refuses both
    dynamic = project["tool"]["setuptools"]["dynamic"]["optional-dependencies"]
    assert {k: v["file"] for k, v in dynamic.items()} == {
        k: [f"requirements/{f}" for f in files] for k, files in EXTRAS.items()
    }
    # every framework has its extra, from the file its environment is built from
    for fw in FRAMEWORKS.values():
        assert dynamic[fw.name]["file"] == [f"requirements/{fw.requirements}.txt"]


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_extra_files_are_plain_pinned_requirements(extra):
    """setuptools reads requirement lines and whole-line comments only: no pip options (-r),
    no inline comments; and every line is an exact pin."""
    for line in _lines(*EXTRAS[extra]):
        assert not line.startswith("-"), f"{extra}: pip option {line!r}"
        assert "#" not in line, f"{extra}: inline comment in {line!r}"
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[a-z0-9,\-]+\])?==[0-9][0-9A-Za-z.+]*", line), line


def test_framework_files_hold_no_test_packages():
    """Test-only packages come from requirements/test.txt (added to every environment), so the
    framework extras install what the framework needs, not pytest."""
    for path in REQUIREMENTS.glob("*.txt"):
        if path.name == "test.txt":
            continue
        names = {_name(line) for line in _lines(path.name) if not line.startswith("-")}
        assert not names & TEST_ONLY, f"{path.name}: {names & TEST_ONLY} belong in test.txt"
    assert {_name(line) for line in _lines("test.txt")} == TEST_ONLY


def test_all_shares_one_numpy_and_mx_stands_alone():
    pins = {}
    for line in _lines(*EXTRAS["all"]):
        pins.setdefault(_name(line), set()).add(line)
    conflicts = {k: v for k, v in pins.items() if len(v) > 1}
    assert not conflicts, f"[all] pins one package twice, differently: {conflicts}"
    mx_numpy = next(line for line in _lines("mx.txt") if _name(line) == "numpy")
    assert mx_numpy.startswith("numpy==1.2") and int(mx_numpy.split(".")[1]) < 24


def test_installed_metadata_has_the_pinned_extras():
    """The spec environment's editable install (redone when pyproject.toml changes) declares
    exactly the files' lines for every extra."""
    if not envs.is_ready("spec"):
        pytest.skip("the spec environment is not built (python3 dev.py envs spec)")
    declared: dict[str, set] = {}
    for req in requires("densenet-parity") or []:
        m = re.search(r';\s*extra\s*==\s*"([^"]+)"', req)
        if m:
            declared.setdefault(m.group(1), set()).add(req[: m.start()].replace(" ", ""))
    assert declared == {k: set(_lines(*files)) for k, files in EXTRAS.items()}


def test_every_environment_file_includes_what_it_names(tmp_path):
    """The stamp covers the included files (spec.txt includes report.txt) and test.txt."""
    files = envs.requirement_files("spec")
    assert files[0].name == "spec.txt"
    assert REQUIREMENTS / "report.txt" in files and files[-1] == envs.TEST_REQUIREMENTS
    for fw in FRAMEWORKS.values():
        assert envs.requirement_files(fw.name) == [
            REQUIREMENTS / f"{fw.requirements}.txt",
            envs.TEST_REQUIREMENTS,
        ]


def test_the_stamp_has_a_requirements_part_and_a_project_part(monkeypatch):
    requirements, project = envs._stamp("torch").split()
    assert requirements == envs._requirements_stamp("torch")
    assert project == envs._project_stamp()
    monkeypatch.setattr(envs, "project_packages", lambda: ["densenet_spec", "densenet_new"])
    assert envs._project_stamp() != project
    assert envs._stamp("torch").split() == [requirements, envs._project_stamp()]


def _fake_env(tmp_path, monkeypatch, stamp: str):
    monkeypatch.setenv("DENSENET_ENVS", str(tmp_path))
    python = tmp_path / "torch" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    (tmp_path / "torch" / ".densenet-stamp").write_text(stamp)
    commands = []

    def run(cmd, **kwargs):
        commands.append([str(c) for c in cmd])
        if cmd[1:3] == ["-m", "venv"]:
            Path(cmd[3]).mkdir(parents=True)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(envs.subprocess, "run", run)
    return commands


def test_a_changed_project_reinstalls_only_the_project(tmp_path, monkeypatch):
    """A new top-level package or a pyproject.toml change redoes the editable install (seconds),
    not the environment (minutes, and a multi-GB download for some)."""
    commands = _fake_env(tmp_path, monkeypatch, f"{envs._requirements_stamp('torch')} old")
    envs.ensure_env("torch", log=lambda m: None)
    assert len(commands) == 1 and commands[0][-2:] == ["-e", str(ROOT)]
    assert "--no-build-isolation" in commands[0]
    assert (tmp_path / "torch" / ".densenet-stamp").read_text() == envs._stamp("torch")


def test_changed_requirements_rebuild_with_test_packages_and_the_project(tmp_path, monkeypatch):
    commands = _fake_env(tmp_path, monkeypatch, "old old")
    envs.ensure_env("torch", log=lambda m: None)
    assert [c[2] for c in commands[:1]] == ["venv"]
    install = commands[1]
    assert install[install.index("-r") + 1].endswith("requirements/torch.txt")
    assert install[-1] == str(envs.TEST_REQUIREMENTS)
    assert commands[2][-2:] == ["-e", str(ROOT)]


FRAMEWORK_NAMES = sorted(FRAMEWORKS)


@pytest.mark.parametrize("name", ["spec", *FRAMEWORK_NAMES])
def test_each_environment_imports_the_project_from_any_folder(name):
    """Issue 23's acceptance: .venvs/<fw>/bin/python -c "import densenet_<fw>" works from /tmp
    with no PYTHONPATH (the editable install), importing this checkout's package."""
    if not envs.is_ready(name):
        if os.environ.get("CI") == "true":
            pytest.fail(f"the {name} environment is not built under CI")
        pytest.skip(f"the {name} environment is not built (python3 dev.py envs {name})")
    package = FRAMEWORKS[name].package if name in FRAMEWORKS else "densenet_spec"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(FRAMEWORKS[name].env if name in FRAMEWORKS else {})
    code = f"import {package}; print({package}.__file__)"
    proc = subprocess.run(
        [str(envs.env_python(name)), "-c", code],
        cwd="/tmp",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip().splitlines()[-1]) == ROOT / package / "__init__.py"


def test_a_built_wheel_declares_the_pins_and_ships_the_type_markers(tmp_path):
    """What a user's `pip install "densenet-parity[torch]"` gets from a clone (a wheel built from
    a copy of the project, as pip builds it): the files' pins as extras, and every framework
    package's py.typed. Built without network isolation with the setuptools of test.txt."""
    import shutil
    import sys
    import zipfile

    source = tmp_path / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for path in ["pyproject.toml", "README.md", "requirements", *envs.project_packages()]:
        copy = shutil.copytree if (ROOT / path).is_dir() else shutil.copy
        copy(ROOT / path, source / path, **({"ignore": ignore} if copy is shutil.copytree else {}))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    declared: dict[str, set] = {}
    for line in metadata.splitlines():
        m = re.fullmatch(r'Requires-Dist: (.+?); extra == "([^"]+)"', line)
        if m:
            declared.setdefault(m.group(2), set()).add(m.group(1).replace(" ", ""))
    assert declared == {k: set(_lines(*files)) for k, files in EXTRAS.items()}
    for fw in FRAMEWORKS.values():
        if (ROOT / fw.package / "py.typed").exists():
            assert f"{fw.package}/py.typed" in names
