"""densenet-parity --weights: the whole report on given weights, in any format the converter reads.

The files are made here from random weights (BatchNorm statistics randomised), never downloaded:
canonical and torchvision-style .safetensors state_dicts with NumPy alone (no torch needed), and
.pth, keras.applications (.weights.h5, .keras) and Gluon .params by densenet-convert's writers in
the environments that have those frameworks (the keras file is saved by the official model
itself), where those environments exist. The config always comes from the file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from densenet_testing import spec_command
from safetensors.numpy import save_file

from densenet_convert import cli as convert_cli
from densenet_convert import gluon_format, keras_format, torchvision_format
from densenet_spec import cli, weightfile
from densenet_spec.case import make_case
from densenet_spec.config import get_preset
from densenet_spec.errors import WeightKeysError
from densenet_spec.params import init_params

# torchvision can hold it (BC layers, theta 0.5, no conv bias, ImageNet stem): tiny-sized
TORCHVISION = get_preset("tiny").replace(conv_bias=False, num_init_features=6)
# tiny with BatchNorm conventions no official model has: carried by the canonical file only
CANONICAL = get_preset("tiny").replace(bn_eps=1e-3, bn_momentum=0.3, bn_running_var="biased")
KERAS = get_preset("densenet121").replace(
    block_config=(1, 2, 1, 1), num_classes=5, **keras_format.FACTS.fields()
)
GLUON = get_preset("densenet121").replace(
    growth_rate=8,
    block_config=(2, 2),
    num_init_features=16,
    bn_size=2,
    num_classes=5,
    **gluon_format.FACTS.fields(),
)


def parity(*args, timeout=900):
    return spec_command("densenet_spec.cli", *args, "--no-setup", timeout=timeout)


def _canonical(path, config, seed=0, dtype="float32"):
    weightfile.save_weights(path, init_params(config, seed, dtype, randomize_bn=True), config)
    return path


def _torchvision_safetensors(path, config=TORCHVISION, seed=1):
    tensors = init_params(config, seed, "float32", randomize_bn=True)
    save_file(torchvision_format.from_canonical(tensors, config), str(path))
    return path


def _run(weights, tmp_path, *args):
    """densenet-parity --weights FILE with the torch worker; the JSON report."""
    out = tmp_path / "report.json"
    proc = parity("--weights", weights, "--frameworks", "torch", "--json", out, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PARITY OK" in proc.stdout and "weights: " in proc.stdout
    return json.loads(out.read_text())


def _args(*argv):
    return cli.parse_args([*map(str, argv), "--no-setup"])


def test_the_case_is_built_around_the_files_weights_and_config(tmp_path):
    path = _canonical(tmp_path / "c.safetensors", CANONICAL, seed=5)
    prepared = cli.prepare(_args("--weights", path, "--dtype", "float64"))
    assert prepared.config == CANONICAL  # not the default preset: the file's config
    assert prepared.weights.info["format"] == "canonical"
    assert prepared.weights.info["preset"] == "tiny"  # the architecture; BN from the file
    case = make_case(
        prepared.config, image_size=32, dtype="float64", params=prepared.weights.params
    )
    stored, _ = weightfile.load_weights(path)
    assert case.params.keys() == stored.keys()
    for name, value in stored.items():
        assert case.params[name].dtype == np.float64
        assert np.array_equal(case.params[name], value)  # float32 -> float64 is exact
    random = make_case(prepared.config, image_size=32, dtype="float64")
    assert np.array_equal(random.x, case.x)  # the same inputs, other weights
    assert not np.array_equal(random.params["stem.conv.weight"], case.params["stem.conv.weight"])


def test_make_case_checks_given_params():
    params = init_params(get_preset("tiny"))
    del params["head.fc.bias"]
    with pytest.raises(WeightKeysError, match="head.fc.bias"):
        make_case(get_preset("tiny"), image_size=32, params=params)


def test_timm_format_is_read_like_torchvision(tmp_path):
    path = _torchvision_safetensors(tmp_path / "timm.safetensors")
    prepared = cli.prepare(_args("--weights", path, "--weights-format", "timm"))
    assert prepared.config == TORCHVISION and prepared.weights.info["format"] == "timm"


def test_a_preset_must_agree_with_the_file(tmp_path, capsys):
    path = _canonical(tmp_path / "c.safetensors", CANONICAL)
    assert cli.prepare(_args("--weights", path, "--preset", "tiny")).config == CANONICAL
    code = cli.main(["--weights", str(path), "--preset", "d2l", "--frameworks", "torch"])
    out = capsys.readouterr().out
    assert code == 2
    assert "UnrecognisedConfigError" in out and "not a d2l" in out
    assert "running torch worker" not in out


@pytest.mark.parametrize(
    "name, content, fmt, error, words",
    [
        ("resnet.safetensors", "resnet", None, "NotADenseNetError", "denselayer"),
        ("w.onnx", b"x", None, "UnknownFormatError", "--from / --to"),
        ("w.bin", b"x", "caffe", "UnknownFormatError", "unknown format 'caffe'"),
        ("bad.safetensors", "misshaped", None, "UnrecognisedConfigError", "blocks.0.layers.1"),
        ("junk.safetensors", b"not a safetensors", "canonical", "NotAWeightFileError", "junk"),
        ("junk.safetensors", b"not a safetensors", None, "NotADenseNetError", "not a readable"),
    ],
)
def test_bad_files_give_the_converters_named_errors(
    tmp_path, capsys, name, content, fmt, error, words
):
    path = tmp_path / name
    if content == "resnet":
        save_file({"conv1.weight": np.zeros((8, 3, 7, 7), np.float32)}, str(path))
    elif content == "misshaped":
        state = torchvision_format.from_canonical(init_params(TORCHVISION), TORCHVISION)
        state["features.denseblock1.denselayer2.conv1.weight"] = np.zeros((6, 5, 1, 1))
        save_file({k: np.asarray(v, np.float32) for k, v in state.items()}, str(path))
    else:
        path.write_bytes(content)
    argv = ["--weights", str(path), "--frameworks", "torch", "--no-setup"]
    code = cli.main(argv + (["--weights-format", fmt] if fmt else []))
    out = " ".join(capsys.readouterr().out.split())
    assert code == 2, out
    assert f"error: {error}: " in out, out
    assert words in out and "Traceback" not in out
    assert "running torch worker" not in out


def test_canonical_weights_end_to_end(tmp_path, require_envs):
    require_envs("torch")
    path = _canonical(tmp_path / "c.safetensors", CANONICAL, seed=2, dtype="float64")
    report = _run(path, tmp_path, "--quantities", "eval,train,grad", "--image-size", "32")
    assert report["ok"] is True
    assert report["case"]["config"] == CANONICAL.to_dict()
    assert report["weights"]["file"] == str(path)
    assert report["weights"]["format"] == "canonical" and report["weights"]["dtype"] == "float64"


def test_torchvision_safetensors_end_to_end(tmp_path, require_envs):
    """A torchvision-style state_dict made with NumPy: every quantity, float64, torch vs oracle."""
    require_envs("torch")
    path = _torchvision_safetensors(tmp_path / "densenet.safetensors")
    report = _run(path, tmp_path, "--steps", "2")
    assert report["ok"] is True
    assert report["case"]["config"] == TORCHVISION.to_dict()
    assert report["case"]["quantities"] == ["eval", "train", "grad", "step"]
    assert report["weights"]["format"] == "torchvision" and report["weights"]["dtype"] == "float32"
    (pair,) = report["pairs"]
    assert any(c["key"] == "step/blocks.1.layers.1.conv2.weight" for c in pair["comparisons"])


def _official_file(tmp_path, config, name, seed=3):
    """A file of an official format, written by densenet-convert's writer in its environment."""
    canonical = _canonical(tmp_path / "source.safetensors", config, seed=seed)
    convert_cli.convert(canonical, tmp_path / name, log=lambda *a: None)
    return tmp_path / name


def test_torch_pth_end_to_end(tmp_path, require_envs):
    require_envs("torch")
    path = _official_file(tmp_path, TORCHVISION, "densenet.pth")
    report = _run(path, tmp_path, "--quantities", "eval,train", "--image-size", "32")
    assert report["ok"] and report["weights"]["format"] == "torchvision"
    assert report["case"]["config"] == TORCHVISION.to_dict()


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_keras_applications_end_to_end(tmp_path, require_envs, suffix):
    """keras.applications' BatchNorm epsilon 1.001e-5 comes with the file into every framework."""
    require_envs("torch", "tf")
    path = _official_file(tmp_path, KERAS, "densenet" + suffix)
    report = _run(path, tmp_path, "--quantities", "eval,train", "--image-size", "32")
    assert report["ok"] and report["weights"]["format"] == "keras"
    assert report["case"]["config"] == KERAS.to_dict()
    assert report["case"]["config"]["bn_eps"] == 1.001e-5


def test_gluon_params_end_to_end(tmp_path, require_envs):
    require_envs("torch", "mx")
    path = _official_file(tmp_path, GLUON, "densenet.params")
    report = _run(path, tmp_path, "--quantities", "eval,train", "--image-size", "32")
    assert report["ok"] and report["weights"]["format"] == "gluon"
    assert report["case"]["config"] == GLUON.to_dict()
