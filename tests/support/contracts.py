"""The tests every framework package passes the same way, written once (pytest's contract-class
idiom): each suite subclasses a contract with its own adapter or package and keeps only the tests
that are its framework's alone. No framework is imported here."""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from densenet_spec import reference, weightfile
from densenet_spec.case import SGDConfig, make_case
from densenet_spec.compare import rel_errors
from densenet_spec.config import get_preset
from densenet_spec.errors import DTypeError, OptimizerStateError, UnknownPresetError
from densenet_spec.params import init_params, trainable_names

ROOT = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------------------------
# Issue 18: the spec's momentum buffer under a learning-rate schedule, through the Adapter

SGD = SGDConfig(lr=0.05, momentum=0.9, weight_decay=1e-4)
LRS = [0.05, 0.05, 0.02, 0.002, 0.03]  # constant, then changes (a step and a cosine-like tail)


def schedule_case(dtype, steps=5, variant="plain", memory_efficient=False):
    return make_case(
        get_preset("tiny"),
        image_size=32,
        dtype=dtype,
        steps=steps,
        quantities=("step",),
        sgd=SGD,
        variant=variant,
        memory_efficient=memory_efficient,
    )


def train(adapter, case, lrs, *, start=0, state=None, buffers=None):
    """Steps start.. of `case` with rates lrs (set_lr before each, as densenet_spec.training
    does for a schedule); from `state`/`buffers` when given. Returns (weights, buffers, losses)."""
    if state is not None:
        adapter.case = dataclasses.replace(case, params=state)
    model = adapter.build()
    optimizer = adapter.make_optimizer(model)
    if buffers is not None:
        adapter.load_optimizer_state(model, optimizer, buffers)
    losses = []
    for k in range(start, len(lrs)):
        adapter.set_lr(optimizer, lrs[k])
        x, y = adapter.images(case.step_x[k]), adapter.labels(case.step_y[k])
        losses.append(float(adapter.to_numpy(adapter.train_step(model, optimizer, x, y))))
    return adapter.to_canonical(model), adapter.optimizer_state(model, optimizer), losses


def max_error(got: dict, want: dict, *, float32: bool = False) -> float:
    """Largest relative error. float32: without the convolution biases, whose train-mode
    gradient is float32 rounding noise (every conv feeds a BatchNorm, which removes a
    per-channel constant), so their buffers agree only to that noise."""
    keys = [k for k in want if not (float32 and ".conv" in k and k.endswith(".bias"))]
    return max(rel_errors({k: got[k] for k in keys}, {k: want[k] for k in keys}).values())


class TrainingContract:
    """Subclass as `class TestTraining(TrainingContract): Adapter = <package>.adapter.Adapter`."""

    Adapter = None
    # the reason a framework has no memory-efficient variant (building one raises it), or None
    memory_efficient_unavailable: str | None = None
    # float32 resume: bit for bit where the optimizer's buffer is the spec's, else within these
    # bounds (weights, buffers), with the reason in the subclass
    float32_resume_bounds: tuple[float, float] | None = None

    @pytest.mark.parametrize(
        "variant, memory_efficient", [("plain", False), ("fast", False), ("plain", True)]
    )
    def test_float64_schedule_follows_the_oracle(self, variant, memory_efficient):
        case = schedule_case("float64", variant=variant, memory_efficient=memory_efficient)
        if memory_efficient and self.memory_efficient_unavailable:
            with pytest.raises(NotImplementedError, match=self.memory_efficient_unavailable):
                self.Adapter(case).build()
            return
        state, buffers, losses = train(self.Adapter(case), case, LRS)
        want_state, want_buffers, want_losses = reference.sgd_steps(
            case.params, case.config, case.step_x, case.step_y, SGD, lrs=LRS
        )
        assert list(buffers) == trainable_names(case.config)
        assert all(b.dtype == np.float64 and b.flags.c_contiguous for b in buffers.values())
        assert max_error(state, want_state) < 1e-10  # float64 rounding
        assert max_error(buffers, want_buffers) < 1e-10  # float64 rounding
        np.testing.assert_allclose(losses, want_losses, rtol=1e-13)

    def test_float32_schedule_follows_the_oracle_to_float32_rounding(self):
        case = schedule_case("float32")
        state, buffers, _ = train(self.Adapter(case), case, LRS)
        want_state, want_buffers, _ = reference.sgd_steps(
            {k: v.astype(np.float64) for k, v in case.params.items()},
            case.config,
            case.step_x.astype(np.float64),
            case.step_y,
            SGD,
            lrs=LRS,
        )
        assert max_error(state, want_state) < 1e-5
        # stem.norm's float32 gradient is the sensitive one (ReLU kinks and max-pool ties, issue
        # 24); the optimizer alone is exact to rounding (each framework's optimizer test)
        assert max_error(buffers, want_buffers, float32=True) < 2e-3
        assert all(b.dtype == np.float32 for b in buffers.values())

    @pytest.mark.parametrize("dtype", ["float64", "float32"])
    @pytest.mark.parametrize("variant", ["plain", "fast"])
    def test_buffers_are_zero_before_the_first_step_and_resume_continues(self, dtype, variant):
        """optimizer_state after k steps (a schedule), loaded into a fresh model and optimizer,
        continues the run: the straight run's weights and buffers."""
        case = schedule_case(dtype, steps=4, variant=variant)
        adapter = self.Adapter(case)
        model = adapter.build()
        zeros = adapter.optimizer_state(model, adapter.make_optimizer(model))
        assert list(zeros) == trainable_names(case.config)
        assert all(not b.any() and b.dtype == dtype for b in zeros.values())
        straight_state, straight_buffers, _ = train(self.Adapter(case), case, LRS[:4])
        half_state, half_buffers, _ = train(self.Adapter(case), case, LRS[:2])
        state, buffers, _ = train(
            self.Adapter(case), case, LRS[:4], start=2, state=half_state, buffers=half_buffers
        )
        bounds = self.float32_resume_bounds if dtype == "float32" else None
        if bounds is None:
            for name in straight_state:
                np.testing.assert_array_equal(state[name], straight_state[name], err_msg=name)
            for name in straight_buffers:
                np.testing.assert_array_equal(buffers[name], straight_buffers[name], err_msg=name)
        else:
            assert max_error(state, straight_state) < bounds[0]
            assert max_error(buffers, straight_buffers, float32=True) < bounds[1]

    def test_buffers_loaded_before_the_first_step_are_used(self):
        """A checkpoint's buffers (from any framework) are the spec's: loading them and stepping
        equals the oracle continuing from them."""
        case = schedule_case("float64", steps=2)
        rng = np.random.default_rng(5)
        start = {n: rng.standard_normal(case.params[n].shape) for n in trainable_names(case.config)}
        state, buffers, _ = train(self.Adapter(case), case, [SGD.lr] * 2, buffers=start)
        want_state, want_buffers, _ = reference.sgd_steps(
            case.params, case.config, case.step_x, case.step_y, SGD, buffers=start
        )
        assert max_error(state, want_state) < 1e-10  # float64 rounding
        assert max_error(buffers, want_buffers) < 1e-10  # float64 rounding

    def test_mismatched_buffers_are_a_named_error_and_load_nothing(self):
        case = schedule_case("float64", steps=1)
        adapter = self.Adapter(case)
        model = adapter.build()
        optimizer = adapter.make_optimizer(model)
        good = adapter.optimizer_state(model, optimizer)
        missing = dict(list(good.items())[1:])
        with pytest.raises(OptimizerStateError, match="missing"):
            adapter.load_optimizer_state(model, optimizer, missing)
        with pytest.raises(OptimizerStateError, match="unexpected"):
            adapter.load_optimizer_state(model, optimizer, good | {"stem.nonsense": np.zeros(1)})
        wrong = {k: np.ones_like(v) for k, v in good.items()} | {"stem.conv.weight": np.zeros(3)}
        with pytest.raises(OptimizerStateError, match=r"mis-shaped \['stem\.conv\.weight'\]"):
            adapter.load_optimizer_state(model, optimizer, wrong)
        after = adapter.optimizer_state(model, optimizer)
        assert all(not b.any() for b in after.values())  # nothing loaded by a failed call

    def test_predict_is_eval_mode_logits(self):
        case = schedule_case("float64", steps=1)
        adapter = self.Adapter(case)
        model = adapter.build()
        got = adapter.to_numpy(adapter.predict(model, adapter.images(case.x)))
        want = reference.forward_features(case.params, case.config, case.x, False)[0]["logits"]
        np.testing.assert_allclose(got, want, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# Issue 23: the small API every densenet_* package shares, and its five-line quick start

API = ["DenseNet", "make_model", "from_preset", "from_file", "save", "load", "predict"]
API += ["from_nchw", "LAYOUT"]


def weight_file(tmp_path, preset="d2l", dtype=np.float64):
    config = get_preset(preset)
    params = init_params(config, 0, dtype, randomize_bn=True)
    path = tmp_path / f"{preset}.safetensors"
    weightfile.save_weights(path, params, config)
    return path, params, config


_FIRST_CALL = """
import json, time
t0 = time.perf_counter()
import numpy as np
from {package} import from_preset, from_nchw, load, predict, save
{imports}
t1 = time.perf_counter()
model = from_preset("d2l")
t2 = time.perf_counter()
save(model, {path!r})
t3 = time.perf_counter()
load(model, {path!r})
t4 = time.perf_counter()
x = from_nchw(np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype("float32"))
as_numpy = lambda v: v.asnumpy() if hasattr(v, "asnumpy") else np.asarray(v)
logits = as_numpy(predict(model, x))
t5 = time.perf_counter()
as_numpy(predict(model, x))
t6 = time.perf_counter()
print(json.dumps({{"import": t1 - t0, "from_preset": t2 - t1, "load": t4 - t3,
                  "first_predict": t5 - t4, "second_predict": t6 - t5}}))
"""


class ApiContract:
    """Subclass as `class TestApi(ApiContract)` with the package's name, its LAYOUT, and how to
    read a model's parameter dtype and a predict() result as NumPy."""

    package: str = ""
    layout: str = ""
    first_call_limits = {"from_preset": 10, "load": 10, "first_predict": 10}  # seconds
    other_init: dict = {}  # from_preset arguments that give other initial weights
    first_call_imports = ""  # what the import time includes (TF: tensorflow, imported lazily)

    def numpy(self, value) -> np.ndarray:
        return value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)

    def param_dtype(self, model) -> str:
        raise NotImplementedError

    @property
    def api(self):
        return importlib.import_module(self.package)

    def test_the_package_exports_exactly_the_shared_api(self):
        assert self.api.__all__ == API
        assert all(getattr(self.api, name) is not None for name in API)
        assert self.api.LAYOUT == self.layout
        assert (ROOT / self.package / "py.typed").exists()

    def test_the_quick_start_gives_the_oracles_logits(self, tmp_path):
        path, params, config = weight_file(tmp_path)
        images = np.random.default_rng(0).standard_normal((2, 1, 32, 32))
        m = self.api  # the five lines
        model = m.from_preset("d2l", dtype="float64")
        m.load(model, path)
        logits = m.predict(model, m.from_nchw(images))
        want = reference.forward_features(params, config, images, False)[0]["logits"]
        assert np.abs(self.numpy(logits) - want).max() / np.abs(want).max() <= 1e-10

    @pytest.mark.parametrize("variant", ["plain", "fast"])
    def test_from_file_takes_config_and_dtype_from_the_file(self, tmp_path, variant):
        m = self.api
        path, params, config = weight_file(tmp_path, "tiny")
        model = m.from_file(path, variant=variant)
        assert model.config == config and self.param_dtype(model) == "float64"
        x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
        want = reference.forward_features(params, config, x, False)[0]["logits"]
        got = self.numpy(m.predict(model, m.from_nchw(x)))
        np.testing.assert_allclose(got, want, rtol=1e-10)
        assert self.param_dtype(m.from_file(path, dtype="float32")) == "float32"
        with pytest.raises(DTypeError):
            m.from_file(path, dtype="int8")

    def test_save_load_and_overrides(self, tmp_path):
        m = self.api
        model = m.from_preset("tiny", num_classes=7)
        assert model.config == get_preset("tiny").replace(num_classes=7)
        m.save(model, tmp_path / "w.safetensors")
        other = m.from_preset("tiny", num_classes=7, **self.other_init)
        x = m.from_nchw(np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype("float32"))
        assert not np.array_equal(self.numpy(m.predict(model, x)), self.numpy(m.predict(other, x)))
        m.load(other, tmp_path / "w.safetensors")
        np.testing.assert_array_equal(
            self.numpy(m.predict(model, x)), self.numpy(m.predict(other, x))
        )
        with pytest.raises(UnknownPresetError):
            m.from_preset("densenet999")

    def test_first_contact_is_quick(self, tmp_path):
        """The quick start in a fresh process (d2l, 32 px, batch 2): each call well under a
        notebook user's patience. Generous bounds: a loaded 2-core machine."""
        path = str(tmp_path / "w.safetensors")
        script = _FIRST_CALL.format(
            package=self.package, path=path, imports=self.first_call_imports
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path
        )
        times = json.loads(out.stdout.splitlines()[-1])
        print(times)
        assert all(times[k] < limit for k, limit in self.first_call_limits.items()), times
