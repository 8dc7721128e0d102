"""The two console commands, as installed in the spec environment, start and show their usage."""

import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

import densenet_envs as envs

SCRIPTS = {"densenet-parity": "densenet_spec.cli:main", "densenet-bench": "benchmarks.cli:main"}


def test_the_distribution_declares_both_commands():
    eps = {ep.name: ep.value for ep in distribution("densenet-parity").entry_points
           if ep.group == "console_scripts"}
    assert eps == SCRIPTS


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_runs(name):
    script = Path(sys.executable).parent / name
    assert script.exists(), f"{script} is not installed"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd="/",
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: {name}"), proc.stdout[:200]


def test_project_packages_are_the_ones_pyproject_installs():
    assert envs.project_packages() == sorted(
        ["benchmarks", "densenet_spec", "densenet_torch", "densenet_jax", "densenet_tf", "densenet_mx"]
    )


def test_spec_stamp_changes_when_a_package_is_added(monkeypatch):
    before = envs._stamp("spec")
    monkeypatch.setattr(envs, "project_packages", lambda: ["benchmarks", "densenet_spec", "new"])
    assert envs._stamp("spec") != before
