"""Adding a framework is a package plus one registry entry: a throwaway package registered here runs
through the real harness (worker subprocess, driver, comparison with the oracle), and every place
that lists frameworks picks it up from the registry."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import textwrap

import pytest

import densenet_envs as envs
from densenet_spec import frameworks
from densenet_spec.case import make_case
from densenet_spec.config import get_preset
from densenet_spec.errors import UnknownFrameworkError
from densenet_spec.harness import run_parity

# A "framework" whose native tensors are NumPy arrays and whose model is the oracle: the smallest
# adapter that satisfies densenet_spec.driver. `scale` lets a test break one gradient on purpose.
FAKE_ADAPTER = textwrap.dedent(
    """
    import numpy as np

    from densenet_spec import reference
    from densenet_spec.driver import Gradients

    SCALE = {scale!r}


    def environment(device, dtype):
        return {{"device": device, "dtype": dtype}}


    class Adapter:
        def __init__(self, case):
            self.case = case
            self.info = environment(case.device, case.dtype)
            self.results, _ = reference.run_case(case)

        def build(self):
            return dict(self.case.params)

        def images(self, x):
            return np.asarray(x)

        def labels(self, y):
            return np.asarray(y)

        def stage_outputs(self, model, x, training):
            mode = "train" if training else "eval"
            n = len(mode) + 1
            return {{k[n:]: v for k, v in self.results.items() if k.startswith(mode + "/")}}

        def loss(self, logits, y):
            return reference.loss(logits, y)

        def gradients(self, model, x, y, training):
            mode = "train" if training else "eval"
            params = None
            if training:
                params = {{k[len("train_grad/"):]: v * SCALE for k, v in self.results.items()
                          if k.startswith("train_grad/") and k != "train_grad/input"}}
            return Gradients(loss=None, input=self.results[mode + "_grad/input"], params=params)

        def make_optimizer(self, model):
            return None

        def train_step(self, model, optimizer, x, y):
            return None

        def to_numpy(self, t):
            return np.asarray(t)

        def to_canonical(self, model):
            return {{k[len("step/"):]: v for k, v in self.results.items() if k.startswith("step/")}}
    """
)


@pytest.fixture
def fake_framework(tmp_path, monkeypatch):
    """Register densenet_fake (one entry) with an adapter; returns a function to set its SCALE."""

    def install(scale: float = 1.0) -> str:
        package = tmp_path / "densenet_fake"
        package.mkdir(exist_ok=True)
        (package / "__init__.py").write_text("")
        (package / "adapter.py").write_text(FAKE_ADAPTER.format(scale=scale))
        return "fake"

    entry = frameworks.Framework(
        name="fake",
        title="NumPy, as a registered framework",
        package="densenet_fake",
        requirements="spec",  # runs in the spec environment: no new environment to build
        layout="NCHW",
        tests="tests/spec",
        peer="",
    )
    monkeypatch.setitem(frameworks.FRAMEWORKS, "fake", entry)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # worker_env appends the caller's PYTHONPATH
    monkeypatch.syspath_prepend(str(tmp_path))
    return install


def _case():
    return make_case(get_preset("tiny"), batch=2, image_size=16, steps=1)


def test_one_registry_entry_runs_through_the_harness(fake_framework, require_envs):
    require_envs("spec")
    name = fake_framework()
    report = run_parity(_case(), [name], setup=False, log=lambda *a: None)
    assert report.runs[name].ok, report.runs[name].error
    assert report.runs[name].info["package"] == "densenet_fake"
    assert report.ok
    assert envs.env_name(name) == "spec"
    assert frameworks.parse_frameworks("fake,torch") == ["fake", "torch"]


def test_a_wrong_gradient_in_the_registered_framework_fails(fake_framework, require_envs):
    """Negative control: the same package with its parameter gradients scaled by 1.01."""
    require_envs("spec")
    name = fake_framework(scale=1.01)
    report = run_parity(_case(), [name], setup=False, log=lambda *a: None)
    assert report.runs[name].ok
    assert not report.ok
    failed = {c.key for p in report.pairs for c in p.comparisons if not c.ok}
    assert failed and all(k.startswith("train_grad/") for k in failed)


def test_everything_that_lists_frameworks_reads_the_registry(monkeypatch):
    extra = dataclasses.replace(frameworks.FRAMEWORKS["torch"], name="extra", requirements="extra")
    monkeypatch.setitem(frameworks.FRAMEWORKS, "extra", extra)
    sys.path.insert(0, str(envs.ROOT))
    try:
        dev = importlib.import_module("dev")
        importlib.reload(dev)
        assert dev.SUITES["extra"] == [extra.tests]
        importlib.reload(envs)
        assert "extra" in envs.ENVIRONMENTS
        structure = importlib.import_module("tests.spec.test_structure")
        importlib.reload(structure)
        assert extra.package in structure.PACKAGES
    finally:
        monkeypatch.undo()
        importlib.reload(envs)
        importlib.reload(dev)


def test_unknown_frameworks_are_named_errors():
    with pytest.raises(UnknownFrameworkError, match="known: torch, jax, tf, mx"):
        frameworks.parse_frameworks("torch,caffe")
    with pytest.raises(UnknownFrameworkError, match="no framework named"):
        frameworks.parse_frameworks(",")
