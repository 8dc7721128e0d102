"""The console commands, as installed in the spec environment, start and show their usage."""

import fnmatch
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
import tomllib

import densenet_envs as envs

SCRIPTS = {
    "densenet-parity": "densenet_spec.cli:main",
    "densenet-bench": "densenet_bench.cli:main",
    "densenet-train": "densenet_spec.train_cli:main",
    "densenet-teach": "densenet_teach.cli:main",
    "densenet-convert": "densenet_convert.cli:main",
}


def test_the_distribution_declares_every_command():
    eps = {
        ep.name: ep.value
        for ep in distribution("densenet-parity").entry_points
        if ep.group == "console_scripts"
    }
    assert eps == SCRIPTS


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_runs(name):
    script = Path(sys.executable).parent / name
    assert script.exists(), f"{script} is not installed"
    proc = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, cwd="/", timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: {name}"), proc.stdout[:200]


def test_project_packages_are_the_ones_pyproject_installs():
    pyproject = tomllib.loads((envs.ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = envs.project_packages()
    assert {"densenet_spec", "densenet_envs", "densenet_bench", "densenet_teach"} <= set(packages)
    for framework in envs.FRAMEWORKS.values():
        assert framework.package in packages
    missed = [p for p in packages if not any(fnmatch.fnmatch(p, pat) for pat in include)]
    assert not missed, f"top-level packages that pyproject.toml does not install: {missed}"


def test_spec_stamp_changes_when_a_package_is_added(monkeypatch):
    before = envs._stamp("spec")
    monkeypatch.setattr(envs, "project_packages", lambda: ["benchmarks", "densenet_spec", "new"])
    assert envs._stamp("spec") != before
