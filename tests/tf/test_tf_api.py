"""Issue 23 in TensorFlow: the small API every densenet_* package shares, and its five-line quick
start against the oracle."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

tf = pytest.importorskip("tensorflow")

import numpy as np  # noqa: E402

import densenet_tf  # noqa: E402
from densenet_spec import reference, weightfile  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.errors import DTypeError, InputShapeError, UnknownPresetError  # noqa: E402
from densenet_spec.params import init_params  # noqa: E402
from densenet_tf import LAYOUT, from_file, from_nchw, from_preset, load, predict, save  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
API = ["DenseNet", "make_model", "from_preset", "from_file", "save", "load", "predict"]
API += ["from_nchw", "LAYOUT"]


def test_the_package_exports_exactly_the_shared_api():
    assert densenet_tf.__all__ == API
    assert all(getattr(densenet_tf, name) is not None for name in API)
    assert LAYOUT == "NHWC"
    assert (ROOT / "densenet_tf" / "py.typed").exists()


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
    assert np.abs(logits.numpy() - want).max() / np.abs(want).max() <= 1e-10


@pytest.mark.parametrize("variant", ["plain", "fast"])
def test_from_file_takes_config_and_dtype_from_the_file(tmp_path, variant):
    path, params, config = _weight_file(tmp_path, "tiny")
    model = from_file(path, variant=variant)
    assert model.config == config and model.dtype_policy.variable_dtype == "float64"
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
    want = reference.forward_features(params, config, x, False)[0]["logits"]
    np.testing.assert_allclose(predict(model, from_nchw(x)).numpy(), want, rtol=1e-10)
    as32 = from_file(path, dtype="float32")
    assert as32.dtype_policy.variable_dtype == "float32"
    with pytest.raises(DTypeError):
        from_file(path, dtype="int8")


def test_save_load_and_overrides(tmp_path):
    model = from_preset("tiny", num_classes=7)
    assert model.config == get_preset("tiny").replace(num_classes=7)
    save(model, tmp_path / "w.safetensors")
    other = from_preset("tiny", num_classes=7)
    load(other, tmp_path / "w.safetensors")
    x = from_nchw(np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype("float32"))
    np.testing.assert_array_equal(predict(model, x).numpy(), predict(other, x).numpy())
    with pytest.raises(UnknownPresetError):
        from_preset("densenet999")


def test_predict_is_eval_mode_and_changes_no_statistic():
    """Keras models keep no train/eval state (each call takes `training`): predict is the
    eval-mode forward, compiled, and leaves the running statistics alone."""
    model = from_preset("tiny", dtype="float64")
    x = from_nchw(np.random.default_rng(3).standard_normal((2, 3, 32, 32)))
    want = model(x, training=False).numpy()
    before = model.head.get_layer("norm").moving_mean.numpy()
    got = predict(model, x)
    np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(model.head.get_layer("norm").moving_mean.numpy(), before)
    np.testing.assert_array_equal(predict(model, x.numpy()).numpy(), want)  # NumPy is fine
    with pytest.raises(DTypeError, match="input dtype"):
        predict(model, tf.cast(x, tf.int32))


def test_from_nchw_keeps_dtype_and_moves_channels_last():
    x = np.arange(24, dtype=np.float64).reshape(1, 2, 3, 4)
    t = from_nchw(x)
    assert isinstance(t, tf.Tensor) and t.dtype == tf.float64 and t.shape == (1, 3, 4, 2)
    np.testing.assert_array_equal(t.numpy(), x.transpose(0, 2, 3, 1))
    with pytest.raises(InputShapeError, match="rank 4"):
        from_nchw(x[0])


_FIRST_CALL = """
import json, time
t0 = time.perf_counter()
import numpy as np
from densenet_tf import from_preset, from_nchw, load, predict, save
import tensorflow
t1 = time.perf_counter()
model = from_preset("d2l")
t2 = time.perf_counter()
save(model, {path!r})
t3 = time.perf_counter()
load(model, {path!r})
t4 = time.perf_counter()
x = from_nchw(np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype("float32"))
logits = predict(model, x).numpy()
t5 = time.perf_counter()
predict(model, x).numpy()
t6 = time.perf_counter()
print(json.dumps({{"import": t1 - t0, "from_preset": t2 - t1, "load": t4 - t3,
                  "first_predict": t5 - t4, "second_predict": t6 - t5}}))
"""


def test_first_contact_is_quick(tmp_path):
    """The quick start in a fresh process (d2l, 32 px, batch 2): each call well under a
    notebook user's patience. Generous bounds: a loaded 2-core machine."""
    script = _FIRST_CALL.format(path=str(tmp_path / "w.safetensors"))
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    times = json.loads(out.stdout.splitlines()[-1])
    print(times)
    assert times["from_preset"] < 10 and times["load"] < 10 and times["first_predict"] < 20
