"""Issue 23 in torch: the small API every densenet_* package shares, and its five-line quick start
against the oracle."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402

import densenet_torch  # noqa: E402
from densenet_spec import reference, weightfile  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.errors import DTypeError, UnknownPresetError  # noqa: E402
from densenet_spec.params import init_params  # noqa: E402
from densenet_torch import (  # noqa: E402
    LAYOUT,
    from_file,
    from_nchw,
    from_preset,
    load,
    predict,
    save,
)

ROOT = Path(__file__).resolve().parents[2]
API = ["DenseNet", "make_model", "from_preset", "from_file", "save", "load", "predict"]
API += ["from_nchw", "LAYOUT"]


def test_the_package_exports_exactly_the_shared_api():
    assert densenet_torch.__all__ == API
    assert LAYOUT == "NCHW"
    assert (ROOT / "densenet_torch" / "py.typed").exists()


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
    assert model.config == config and model.head.fc.weight.dtype == torch.float64
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
    want = reference.forward_features(params, config, x, False)[0]["logits"]
    np.testing.assert_allclose(predict(model, from_nchw(x)).numpy(), want, rtol=1e-10)
    as32 = from_file(path, dtype="float32")
    assert as32.head.fc.weight.dtype == torch.float32
    with pytest.raises(DTypeError):
        from_file(path, dtype="int8")


def test_save_load_and_overrides(tmp_path):
    model = from_preset("tiny", num_classes=7)
    assert model.config == get_preset("tiny").replace(num_classes=7)
    save(model, tmp_path / "w.safetensors")
    other = from_preset("tiny", num_classes=7)
    load(other, tmp_path / "w.safetensors")
    x = from_nchw(np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype("float32"))
    torch.testing.assert_close(predict(model, x), predict(other, x), rtol=0, atol=0)
    with pytest.raises(UnknownPresetError):
        from_preset("densenet999")


@pytest.mark.parametrize("variant", ["plain", "fast"])
def test_predict_is_eval_mode_and_leaves_the_modes_as_it_found_them(variant):
    model = from_preset("tiny", variant=variant, dtype="float64")
    x = from_nchw(np.random.default_rng(3).standard_normal((2, 3, 32, 32)))
    with torch.no_grad():
        want = model.eval()(x)
    model.train()
    model.head.norm.eval()  # a mixed state (e.g. frozen BatchNorm) comes back as it was
    before = model.head.norm.running_mean.clone(), model.stem.norm.running_mean.clone()
    got = predict(model, x)
    assert not got.requires_grad
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert model.training and model.stem.norm.training and not model.head.norm.training
    assert torch.equal(model.head.norm.running_mean, before[0])
    assert torch.equal(model.stem.norm.running_mean, before[1])
    with pytest.raises(DTypeError, match=r"torch\.Tensor"):
        predict(model, x.numpy())


def test_from_nchw_keeps_dtype_and_layout():
    x = np.arange(24, dtype=np.float64).reshape(1, 2, 3, 4)
    t = from_nchw(x)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.shape == x.shape
    np.testing.assert_array_equal(t.numpy(), x)
    x[0, 0, 0, 0] = 99  # a copy: the caller's array stays theirs
    assert t[0, 0, 0, 0] == 0


_FIRST_CALL = """
import json, time
t0 = time.perf_counter()
import numpy as np
from densenet_torch import from_preset, from_nchw, load, predict, save
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
    assert times["from_preset"] < 10 and times["load"] < 10 and times["first_predict"] < 10
