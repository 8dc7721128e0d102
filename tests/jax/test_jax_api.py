"""Issue 23 in JAX: the small API every densenet_* package shares, and its five-line quick start
against the oracle."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import densenet_jax  # noqa: E402
from densenet_jax import (  # noqa: E402
    LAYOUT,
    from_file,
    from_nchw,
    from_preset,
    load,
    predict,
    save,
)
from densenet_spec import reference, weightfile  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.errors import DTypeError, UnknownPresetError  # noqa: E402
from densenet_spec.params import init_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
API = ["DenseNet", "make_model", "from_preset", "from_file", "save", "load", "predict"]
API += ["from_nchw", "LAYOUT"]


def test_the_package_exports_exactly_the_shared_api():
    assert densenet_jax.__all__ == API
    assert LAYOUT == "NHWC"
    assert (ROOT / "densenet_jax" / "py.typed").exists()


def _weight_file(tmp_path, preset="d2l", dtype=np.float64):
    config = get_preset(preset)
    params = init_params(config, 0, dtype, randomize_bn=True)
    path = tmp_path / f"{preset}.safetensors"
    weightfile.save_weights(path, params, config)
    return path, params, config


def test_the_quick_start_gives_the_oracles_logits(tmp_path):
    path, params, config = _weight_file(tmp_path)
    images = np.random.default_rng(0).standard_normal((2, 1, 32, 32))
    # the five lines
    model = from_preset("d2l", dtype="float64")
    load(model, path)
    logits = predict(model, from_nchw(images))
    want = reference.forward_features(params, config, images, False)[0]["logits"]
    assert np.abs(np.asarray(logits) - want).max() / np.abs(want).max() <= 1e-10


@pytest.mark.parametrize("variant", ["plain", "fast"])
def test_from_file_takes_config_and_dtype_from_the_file(tmp_path, variant):
    path, params, config = _weight_file(tmp_path, "tiny")
    model = from_file(path, variant=variant)
    assert model.config == config and model.head.fc.kernel.dtype == jnp.float64
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
    want = reference.forward_features(params, config, x, False)[0]["logits"]
    np.testing.assert_allclose(np.asarray(predict(model, from_nchw(x))), want, rtol=1e-10)
    as32 = from_file(path, dtype="float32")
    assert as32.head.fc.kernel.dtype == jnp.float32
    with pytest.raises(DTypeError):
        from_file(path, dtype="int8")


def test_save_load_and_overrides(tmp_path):
    model = from_preset("tiny", num_classes=7)
    assert model.config == get_preset("tiny").replace(num_classes=7)
    save(model, tmp_path / "w.safetensors")
    other = from_preset("tiny", num_classes=7, seed=1)
    x = from_nchw(np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype("float32"))
    assert not np.array_equal(predict(model, x), predict(other, x))
    load(other, tmp_path / "w.safetensors")
    np.testing.assert_array_equal(predict(model, x), predict(other, x))
    with pytest.raises(UnknownPresetError):
        from_preset("densenet999")


def test_from_preset_with_rngs_uses_nnx_initialisers():
    model = from_preset("tiny", rngs=nnx.Rngs(0))
    x = from_nchw(np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype("float32"))
    assert predict(model, x).shape == (2, 5)


@pytest.mark.parametrize("variant", ["plain", "fast"])
def test_predict_is_eval_mode_and_leaves_the_modes_as_it_found_them(variant):
    model = from_preset("tiny", variant=variant, dtype="float64")
    x = from_nchw(np.random.default_rng(3).standard_normal((2, 3, 32, 32)))
    model.eval()
    want = model(x)
    model.train()
    model.head.norm.use_running_average = True  # a mixed state (a frozen BatchNorm) stays
    before = np.asarray(model.head.norm.mean[...]), np.asarray(model.stem.norm.mean[...])
    got = predict(model, x)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert not model.use_running_average and not model.stem.norm.use_running_average
    assert model.head.norm.use_running_average
    np.testing.assert_array_equal(model.head.norm.mean[...], before[0])
    np.testing.assert_array_equal(model.stem.norm.mean[...], before[1])
    with pytest.raises(DTypeError, match="input dtype float32 differs"):
        predict(model, x.astype(jnp.float32))
    with pytest.raises(DTypeError, match=r"jax\.Array or NumPy"):
        predict(model, [[1.0]])


def test_from_nchw_keeps_dtype_and_moves_channels_last():
    x = np.arange(24, dtype=np.float64).reshape(1, 2, 3, 4)
    t = from_nchw(x)
    assert isinstance(t, jax.Array) and t.dtype == jnp.float64 and t.shape == (1, 3, 4, 2)
    np.testing.assert_array_equal(np.asarray(t), x.transpose(0, 2, 3, 1))
    x[0, 0, 0, 0] = 99  # a copy: the caller's array stays theirs
    assert t[0, 0, 0, 0] == 0


_FIRST_CALL = """
import json, time
t0 = time.perf_counter()
import numpy as np
from densenet_jax import from_preset, from_nchw, load, predict, save
t1 = time.perf_counter()
model = from_preset("d2l")
t2 = time.perf_counter()
save(model, {path!r})
t3 = time.perf_counter()
load(model, {path!r})
t4 = time.perf_counter()
x = from_nchw(np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype("float32"))
logits = np.asarray(predict(model, x))
t5 = time.perf_counter()
np.asarray(predict(model, x))
t6 = time.perf_counter()
print(json.dumps({{"import": t1 - t0, "from_preset": t2 - t1, "load": t4 - t3,
                  "first_predict": t5 - t4, "second_predict": t6 - t5}}))
"""


def test_first_contact_is_quick(tmp_path):
    """The quick start in a fresh process (d2l, 32 px, batch 2): each call well under a
    notebook user's patience (was 10 s to build and 7 s to predict uncompiled). Generous
    bounds: a loaded 2-core machine."""
    script = _FIRST_CALL.format(path=str(tmp_path / "w.safetensors"))
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    times = json.loads(out.stdout.splitlines()[-1])
    print(times)
    assert times["from_preset"] < 5 and times["load"] < 5 and times["first_predict"] < 10
