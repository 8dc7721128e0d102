"""densenet-convert's command line: named errors, nothing written on error, exact round trips.

These run in the spec environment with torchvision-style .safetensors state_dicts (no torch
needed); one test also goes through a framework environment's worker (MXNet) where it exists.
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from densenet_convert import cli, torchvision_format
from densenet_convert.errors import (
    FormatCannotHoldError,
    NotADenseNetError,
    UnknownFormatError,
    UnknownLayoutError,
    UnrecognisedConfigError,
)
from densenet_envs import env_python
from densenet_spec import weightfile
from densenet_spec.config import get_preset
from densenet_spec.params import init_params

SMALL = get_preset("tiny").replace(conv_bias=False, num_init_features=6)


def _state(config=SMALL, seed=0) -> dict:
    return torchvision_format.from_canonical(init_params(config, seed=seed), config)


def _convert(*args):
    return cli.convert(*args, log=lambda *_: None)


def test_torchvision_safetensors_to_canonical_and_back_is_exact(tmp_path):
    state = _state()
    save_file(state, str(tmp_path / "tv.safetensors"))
    _convert(tmp_path / "tv.safetensors", tmp_path / "c.safetensors")
    tensors, config = weightfile.load_weights(tmp_path / "c.safetensors")
    assert config == SMALL  # tiny's architecture, torch's BatchNorm conventions
    _convert(tmp_path / "c.safetensors", tmp_path / "back.safetensors", None, "torchvision")
    from safetensors.numpy import load_file

    back = load_file(str(tmp_path / "back.safetensors"))
    assert back.keys() == state.keys()
    assert all(np.array_equal(back[k], state[k]) for k in state)


def test_main_prints_the_config_and_exit_code(tmp_path, capsys):
    save_file(_state(), str(tmp_path / "tv.safetensors"))
    assert cli.main([str(tmp_path / "tv.safetensors"), str(tmp_path / "c.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "growth_rate=3" in out and "wrote canonical" in out
    code = cli.main([str(tmp_path / "tv.safetensors"), str(tmp_path / "x.txt")])
    assert code == 2
    assert "UnknownFormatError" in capsys.readouterr().err
    assert not (tmp_path / "x.txt").exists()


def test_unknown_format_names_the_known_ones(tmp_path):
    save_file(_state(), str(tmp_path / "tv.safetensors"))
    with pytest.raises(UnknownFormatError, match="known: canonical, torchvision"):
        _convert(tmp_path / "tv.safetensors", tmp_path / "o.safetensors", "caffe")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(UnknownFormatError, match="--from / --to"):
        _convert(tmp_path / "w.onnx", tmp_path / "o.safetensors")


def test_a_resnet_state_dict_is_not_a_densenet_and_nothing_is_written(tmp_path):
    save_file(
        {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32), "fc.weight": np.zeros((10, 512))},
        str(tmp_path / "resnet.safetensors"),
    )
    (tmp_path / "old.safetensors").write_bytes(b"keep me")
    with pytest.raises(NotADenseNetError, match="denselayer"):
        _convert(tmp_path / "resnet.safetensors", tmp_path / "old.safetensors", None, "canonical")
    assert (tmp_path / "old.safetensors").read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.safetensors", "resnet.safetensors"]


def test_a_deep_stem_is_an_unknown_layout(tmp_path):
    state = _state()
    state["features.conv0.0.weight"] = state.pop("features.conv0.weight")  # timm's deep stem
    save_file(state, str(tmp_path / "deep.safetensors"))
    with pytest.raises(UnknownLayoutError, match="features.conv0.0.weight"):
        _convert(tmp_path / "deep.safetensors", tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_shapes_that_fit_no_config_are_named(tmp_path):
    state = _state()
    layer = "features.denseblock1.denselayer2.conv1.weight"
    state[layer] = np.zeros((6, 5, 1, 1), np.float32)  # wrong input width for layer 2
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UnrecognisedConfigError, match="blocks.0.layers.1.conv1.weight"):
        _convert(tmp_path / "bad.safetensors", tmp_path / "o.safetensors")


def test_preset_mismatch_is_named(tmp_path):
    save_file(_state(), str(tmp_path / "tv.safetensors"))
    with pytest.raises(UnrecognisedConfigError, match="not a densenet121: growth_rate"):
        _convert(tmp_path / "tv.safetensors", tmp_path / "o.safetensors", None, None, "densenet121")


def test_a_config_the_target_cannot_hold_is_refused_before_writing(tmp_path):
    config = get_preset("d2l")
    weightfile.save_weights(tmp_path / "d2l.safetensors", init_params(config), config)
    with pytest.raises(FormatCannotHoldError, match="no bottleneck"):
        _convert(tmp_path / "d2l.safetensors", tmp_path / "tv.pth")
    assert not (tmp_path / "tv.pth").exists()


@pytest.mark.skipif(not env_python("mx").exists(), reason="no mx environment")
def test_gluon_through_the_mx_worker(tmp_path):
    """A framework step in its own environment: canonical -> .params -> canonical, exact;
    a named error raised in the worker comes back as the same class."""
    weightfile.save_weights(tmp_path / "c.safetensors", init_params(SMALL, seed=2), SMALL)
    _convert(tmp_path / "c.safetensors", tmp_path / "m.params")
    _convert(tmp_path / "m.params", tmp_path / "back.safetensors")
    a, config_a = weightfile.load_weights(tmp_path / "c.safetensors")
    b, config_b = weightfile.load_weights(tmp_path / "back.safetensors")
    assert config_b == config_a.replace(bn_running_var="biased")  # Gluon's rule on CPU
    assert all(np.array_equal(a[k], b[k]) for k in a)
    (tmp_path / "junk.params").write_bytes(b"not an ndarray file")
    with pytest.raises(NotADenseNetError, match="mx.nd.load failed"):
        _convert(tmp_path / "junk.params", tmp_path / "o.safetensors")
