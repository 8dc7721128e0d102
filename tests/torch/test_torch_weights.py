"""Canonical weights in and out of the torch model: round trip, named errors, atomic save."""

import json
import os

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from densenet_spec import weightfile  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.errors import (  # noqa: E402
    ConfigMismatchError,
    NotAWeightFileError,
    WeightDtypeError,
    WeightKeysError,
)
from densenet_spec.params import init_params  # noqa: E402
from densenet_torch import DenseNet  # noqa: E402
from densenet_torch.weights import (  # noqa: E402
    from_canonical,
    load_weights,
    save_weights,
    to_canonical,
)

CONFIG = get_preset("tiny")


def _model(dtype=torch.float64, config=CONFIG):
    return DenseNet(config).to(dtype)


def _params(dtype=np.float64, config=CONFIG):
    return init_params(config, seed=3, dtype=dtype, randomize_bn=True)


def _raw_file(path, tensors, config=CONFIG):
    """A safetensors file with our metadata but unchecked contents (what a buggy writer makes)."""
    metadata = {
        "format": weightfile.FORMAT,
        "format_version": weightfile.FORMAT_VERSION,
        "config": config.to_json(),
        "dtype": "float64",
    }
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata)


def test_from_canonical_then_to_canonical_is_identity():
    params = _params()
    model = _model()
    from_canonical(model, params)
    out = to_canonical(model)
    assert list(out) == list(params)
    for name in params:
        np.testing.assert_array_equal(out[name], params[name])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, dtype):
    model = _model(dtype)
    from_canonical(model, _params(np.float32 if dtype == torch.float32 else np.float64))
    path = tmp_path / "w.safetensors"
    save_weights(model, path)
    loaded = _model(dtype)
    load_weights(loaded, path)
    x = torch.randn(2, 3, 16, 16, dtype=dtype)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        if a.is_floating_point():
            assert torch.equal(a, b)


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path):
    params = _params()
    del params["head.fc.bias"]
    params["head.fc.extra"] = np.zeros(3)
    params["stem.conv.weight"] = np.zeros((7, 3, 3, 3))
    with pytest.raises(WeightKeysError) as err:
        from_canonical(_model(), params)
    e = err.value
    assert e.missing == ["head.fc.bias"]
    assert e.unexpected == ["head.fc.extra"]
    assert e.misshaped == {"stem.conv.weight": ((7, 3, 3, 3), (7, 3, 7, 7))}
    for name in ("head.fc.bias", "head.fc.extra", "stem.conv.weight"):
        assert name in str(e)

    path = tmp_path / "bad.safetensors"
    _raw_file(path, params)
    with pytest.raises(WeightKeysError, match="head.fc.bias"):
        load_weights(_model(), path)


def test_nothing_copied_when_validation_fails():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = _params()
    del params["head.fc.bias"]
    with pytest.raises(WeightKeysError):
        from_canonical(model, params)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_wrong_dtype_is_refused_not_cast(tmp_path):
    with pytest.raises(WeightDtypeError, match="float32"):
        from_canonical(_model(torch.float64), _params(np.float32))
    path = tmp_path / "w32.safetensors"
    weightfile.save_weights(path, _params(np.float32), CONFIG)
    with pytest.raises(WeightDtypeError, match="float32"):
        load_weights(_model(torch.float64), path)


def test_config_mismatch_names_the_field(tmp_path):
    path = tmp_path / "w.safetensors"
    weightfile.save_weights(path, _params(), CONFIG)
    other = CONFIG.replace(bn_eps=1e-3)
    with pytest.raises(ConfigMismatchError, match="bn_eps") as err:
        load_weights(_model(config=other), path)
    assert err.value.differences == {"bn_eps": (1e-5, 1e-3)}


def test_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "w.safetensors"
    weightfile.save_weights(path, _params(), CONFIG)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(NotAWeightFileError):
        load_weights(_model(), truncated)

    foreign = tmp_path / "weights.pt"
    torch.save(_model().state_dict(), foreign)
    with pytest.raises(NotAWeightFileError):
        load_weights(_model(), foreign)

    plain = tmp_path / "plain.safetensors"  # safetensors, but no densenet-parity metadata
    save_file({"x": np.zeros(2)}, str(plain))
    with pytest.raises(NotAWeightFileError, match="metadata"):
        load_weights(_model(), plain)

    with pytest.raises(NotAWeightFileError, match="no such"):
        load_weights(_model(), tmp_path / "absent.safetensors")


def test_save_is_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous file intact and no temp file behind."""
    path = tmp_path / "w.safetensors"
    model = _model()
    from_canonical(model, _params())
    save_weights(model, path)
    old = path.read_bytes()

    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", crash)  # fails after the temp file has been written
    with torch.no_grad():
        model.head.fc.bias.add_(1.0)
    with pytest.raises(OSError, match="disk gone"):
        save_weights(model, path)
    monkeypatch.undo()

    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    meta = weightfile.read_metadata(path)
    assert json.loads(meta["config"]) == CONFIG.to_dict()
