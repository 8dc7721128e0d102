"""densenet-convert with torchvision and timm: the official model and ours give the same logits.

The numerical proofs need torchvision (and timm), which cannot be installed beside the CI torch
environment's CPU wheel (requirements/bench-torchvision.txt says why): they run in the
bench-torchvision environment and are skipped here with that reason.

    PYTHONPATH=. .venvs/bench-torchvision/bin/python -m pytest tests/torch/convert

The tests without the official package check the .pth files we write against the names and
shapes torchvision's densenet121 has (tests/fixtures/convert) and that .pth reading round-trips.
Official models are randomly initialised, BatchNorm statistics randomised too; nothing is
downloaded. Float64 logits must agree to 1e-10 (measured: 0 to a few 1e-16).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from densenet_convert import formats, torchvision_format
from densenet_convert.errors import UnknownLayoutError
from densenet_spec import reference
from densenet_spec.config import get_preset
from densenet_spec.params import init_params
from densenet_torch import weights as torch_weights
from densenet_torch.variants import make_model

ROOT = Path(__file__).resolve().parents[3]
FLOAT64_BOUND = 1e-10  # same arithmetic in both models: only summation order may differ
NO_TORCHVISION = "torchvision is not in this environment (its torch build is not the CI CPU wheel)"


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere, BatchNorm's affine terms and running statistics included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, torch.nn.Linear):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def _ours(tensors: dict, config) -> torch.nn.Module:
    model = make_model(config, dtype=torch.float64)
    torch_weights.from_canonical(model, {k: v.astype(np.float64) for k, v in tensors.items()})
    return model


def _max_logit_difference(official, ours, config, train: bool, seed=0, size=32) -> float:
    x = torch.from_numpy(
        np.random.default_rng(seed).standard_normal((3, config.in_channels, size, size))
    )
    official, ours = official.double(), ours.double()
    official.train(train)
    ours.train(train)
    with torch.no_grad():
        a, b = official(x), ours(x)
    return float((a - b).abs().max())


def _oracle_difference(official, tensors, config, train: bool, size=32) -> float:
    x = np.random.default_rng(1).standard_normal((3, config.in_channels, size, size))
    official = official.double().train(train)
    with torch.no_grad():
        a = official(torch.from_numpy(x)).numpy()
    params = {k: v.astype(np.float64) for k, v in tensors.items()}
    features, _ = reference.forward_features(params, config, x, train)
    return float(np.abs(a - features["logits"]).max())


def _small_torchvision(seed=0):
    torchvision = pytest.importorskip("torchvision", reason=NO_TORCHVISION)
    model = torchvision.models.DenseNet(
        growth_rate=8, block_config=(2, 3, 2), num_init_features=16, bn_size=2, num_classes=7
    )
    return _randomize(model, seed)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_to_canonical_gives_equal_logits(tmp_path, suffix):
    official = _small_torchvision()
    path = tmp_path / f"official{suffix}"
    if suffix == ".pth":
        torch.save(official.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(official.state_dict(), path)
    tensors, config = formats.read_canonical(path, "torchvision")
    assert config == get_preset("densenet121").replace(
        growth_rate=8, block_config=(2, 3, 2), num_init_features=16, bn_size=2, num_classes=7
    )
    for train in (False, True):
        assert _max_logit_difference(official, _ours(tensors, config), config, train) <= (
            FLOAT64_BOUND
        )
        assert _oracle_difference(official, tensors, config, train) <= FLOAT64_BOUND


def test_canonical_to_torchvision_loads_strict_and_gives_equal_logits(tmp_path):
    official = _small_torchvision()
    config = get_preset("densenet121").replace(
        growth_rate=8, block_config=(2, 3, 2), num_init_features=16, bn_size=2, num_classes=7
    )
    params = init_params(config, seed=3, randomize_bn=True)
    formats.write_format(tmp_path / "ours.pth", "torchvision", params, config)
    state = torch.load(tmp_path / "ours.pth", weights_only=True)
    official.load_state_dict(state, strict=True)
    for train in (False, True):
        assert _max_logit_difference(official, _ours(params, config), config, train) <= (
            FLOAT64_BOUND
        )


def test_densenet121_preset_through_the_cli_and_old_style_keys(tmp_path):
    """The command line end to end: .pth read in the torch environment, the preset named."""
    torchvision = pytest.importorskip("torchvision", reason=NO_TORCHVISION)
    official = _randomize(torchvision.models.densenet121(weights=None), 5)
    state = {  # as torchvision < 0.3 saved it: denselayer1.norm.1.weight
        k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v
        for k, v in official.state_dict().items()
    }
    torch.save(state, tmp_path / "densenet121.pth")
    spec_python = ROOT / ".venvs" / "spec" / "bin" / "python"
    python = str(spec_python) if spec_python.exists() else sys.executable
    proc = subprocess.run(
        [python, "-m", "densenet_convert.cli", str(tmp_path / "densenet121.pth"),
         str(tmp_path / "densenet121.safetensors"), "--preset", "densenet121"],
        capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""},
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "densenet121" in proc.stdout
    tensors, config = formats.read_canonical(tmp_path / "densenet121.safetensors", "canonical")
    assert config == get_preset("densenet121")
    assert _max_logit_difference(official, _ours(tensors, config), config, False) <= (FLOAT64_BOUND)


def test_timm_both_ways_with_one_input_channel(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is not in this environment")
    official = _randomize(
        timm.models.densenet.DenseNet(
            growth_rate=8, block_config=(2, 2), bn_size=2, in_chans=1, num_classes=5
        ),
        7,
    )
    torch.save(official.state_dict(), tmp_path / "timm.pth")
    tensors, config = formats.read_canonical(tmp_path / "timm.pth", "timm")
    assert (config.in_channels, config.num_init_features, config.growth_rate) == (1, 16, 8)
    for train in (False, True):
        assert _max_logit_difference(official, _ours(tensors, config), config, train) <= (
            FLOAT64_BOUND
        )
    params = init_params(config, seed=2, randomize_bn=True)
    formats.write_format(tmp_path / "back.pth", "timm", params, config)
    official.load_state_dict(torch.load(tmp_path / "back.pth", weights_only=True), strict=True)
    for train in (False, True):
        assert _max_logit_difference(official, _ours(params, config), config, train) <= (
            FLOAT64_BOUND
        )


# Without torchvision: what we write has torchvision's names and shapes, and reads back exactly.


def test_written_pth_has_torchvision_densenet121_names_and_shapes(tmp_path):
    fixture = json.loads(
        (ROOT / "tests" / "fixtures" / "convert" / "torchvision_densenet121.json").read_text()
    )
    config = get_preset("densenet121")
    params = init_params(config, seed=0)
    formats.write_format(tmp_path / "w.pth", "torchvision", params, config)
    state = torch.load(tmp_path / "w.pth", weights_only=True)
    assert [[k, list(v.shape)] for k, v in state.items()] == fixture["tensors"]
    assert state["features.norm0.num_batches_tracked"].dtype == torch.int64


def test_our_model_through_a_pth_and_back_is_bit_identical(tmp_path):
    config = get_preset("densenet121").replace(
        growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=3
    )
    model = make_model(config)
    torch_weights.from_canonical(model, init_params(config, seed=4, randomize_bn=True))
    params = torch_weights.to_canonical(model)
    formats.write_format(tmp_path / "m.pt", "torchvision", params, config)
    back, back_config = formats.read_canonical(tmp_path / "m.pt", "torchvision")
    assert back_config == config
    assert all(np.array_equal(back[k], params[k]) for k in params)


def test_checkpoint_nesting_and_dataparallel_prefix_are_unwrapped(tmp_path):
    config = get_preset("densenet121").replace(
        growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=3
    )
    state = torchvision_format.from_canonical(init_params(config, seed=4), config)
    nested = {
        "epoch": torch.tensor(3),
        "state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in state.items()},
    }
    torch.save(nested, tmp_path / "ckpt.pth")
    _, got = formats.read_canonical(tmp_path / "ckpt.pth", "torchvision")
    assert got == config
    torch.save({"epoch": 3, "weights": nested["state_dict"]}, tmp_path / "odd.pth")
    with pytest.raises(UnknownLayoutError, match="pass the state_dict itself"):
        formats.read_canonical(tmp_path / "odd.pth", "torchvision")
