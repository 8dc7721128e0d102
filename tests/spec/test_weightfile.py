"""The canonical weight file: self-describing, validated on load, written atomically."""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from densenet_spec.config import get_preset
from densenet_spec.errors import (
    ConfigMismatchError,
    NotAWeightFileError,
    WeightDtypeError,
    WeightKeysError,
)
from densenet_spec.params import init_params, param_specs
from densenet_spec.weightfile import FORMAT, load_weights, read_metadata, save_weights

TINY = get_preset("tiny")


@pytest.fixture
def params():
    return init_params(TINY, seed=3, dtype=np.float64, randomize_bn=True)


def test_round_trip_is_exact_and_self_describing(tmp_path, params):
    path = tmp_path / "w.safetensors"
    save_weights(path, params, TINY)
    meta = read_metadata(path)
    assert meta["format"] == FORMAT and meta["dtype"] == "float64"
    assert json.loads(meta["config"])["growth_rate"] == 3
    loaded, cfg = load_weights(path)
    assert cfg == TINY
    assert list(loaded) == [s.name for s in param_specs(TINY)] or set(loaded) == set(params)
    for k in params:
        np.testing.assert_array_equal(loaded[k], params[k])


def test_init_is_deterministic_and_seeded():
    a, b = init_params(TINY, seed=1), init_params(TINY, seed=1)
    c = init_params(TINY, seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["stem.conv.weight"], c["stem.conv.weight"])
    assert np.all(a["stem.norm.weight"] == 1) and np.all(a["stem.norm.running_var"] == 1)


def test_missing_unexpected_and_misshaped_keys_are_all_listed(tmp_path, params):
    bad = dict(params)
    del bad["head.fc.bias"]
    bad["head.extra"] = np.zeros(3)
    bad["stem.conv.weight"] = np.zeros((7, 3, 3, 3))
    path = tmp_path / "bad.safetensors"
    save_file(
        bad, str(path), metadata={"format": FORMAT, "format_version": "1", "config": TINY.to_json()}
    )
    with pytest.raises(WeightKeysError) as e:
        load_weights(path)
    err = e.value
    assert err.missing == ["head.fc.bias"] and err.unexpected == ["head.extra"]
    assert err.misshaped == {"stem.conv.weight": ((7, 3, 3, 3), (7, 3, 7, 7))}
    for word in ("head.fc.bias", "head.extra", "stem.conv.weight", "(7, 3, 3, 3)"):
        assert word in str(err)


def test_save_refuses_bad_tensors(tmp_path, params):
    bad = {k: v for k, v in params.items() if k != "head.fc.bias"}
    with pytest.raises(WeightKeysError, match="head.fc.bias"):
        save_weights(tmp_path / "w.safetensors", bad, TINY)
    assert not (tmp_path / "w.safetensors").exists()


def test_wrong_dtype_is_named(tmp_path, params):
    path = tmp_path / "w.safetensors"
    save_weights(path, params, TINY)
    with pytest.raises(WeightDtypeError, match="float64.*float32"):
        load_weights(path, TINY, "float32")
    mixed = dict(params)
    mixed["head.fc.bias"] = mixed["head.fc.bias"].astype(np.float32)
    with pytest.raises(WeightDtypeError, match="one of"):
        save_weights(path, mixed, TINY)
    ints = {k: v.astype(np.int32) for k, v in params.items()}
    with pytest.raises(WeightDtypeError):
        save_weights(path, ints, TINY)


def test_config_mismatch_names_fields(tmp_path, params):
    path = tmp_path / "w.safetensors"
    save_weights(path, params, TINY)
    other = TINY.replace(bn_eps=1e-3, num_classes=5)
    with pytest.raises(ConfigMismatchError, match="bn_eps: file has 1e-05, model has 0.001") as e:
        load_weights(path, other)
    assert set(e.value.differences) == {"bn_eps"}


def test_truncated_and_foreign_files(tmp_path, params):
    path = tmp_path / "w.safetensors"
    save_weights(path, params, TINY)
    data = path.read_bytes()
    for cut in (4, len(data) // 2, len(data) - 3):
        trunc = tmp_path / f"cut{cut}.safetensors"
        trunc.write_bytes(data[:cut])
        with pytest.raises(NotAWeightFileError, match=trunc.name):
            load_weights(trunc)
    pickle_like = tmp_path / "model.pt"
    pickle_like.write_bytes(b"\x80\x04\x95PK\x03\x04 not safetensors")
    with pytest.raises(NotAWeightFileError):
        load_weights(pickle_like)
    plain = tmp_path / "plain.safetensors"
    save_file({"a": np.zeros(2)}, str(plain))
    with pytest.raises(NotAWeightFileError, match="without densenet-parity metadata"):
        load_weights(plain)
    with pytest.raises(NotAWeightFileError, match="no such weight file"):
        load_weights(tmp_path / "absent.safetensors")


def test_write_is_atomic_when_the_writer_crashes(tmp_path, params, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_weights(path, params, TINY)
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "fsync", crash)
    changed = {k: v + 1 for k, v in params.items()}
    with pytest.raises(OSError, match="simulated"):
        save_weights(path, changed, TINY)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
