"""densenet-convert's name tables against the official models' own names and shapes.

The fixtures (tests/fixtures/convert, made by scripts/make_convert_fixtures.py from randomly
initialised torchvision, timm, keras.applications and Gluon zoo models) stand in for packages this
environment does not have: every official name must map to a canonical one, the shapes must give
the preset's config with the format's BatchNorm conventions, and the way back must give exactly
the official names, shapes and variable order. The numbers are checked where the packages are
(tests/torch/convert, tests/tf/convert, tests/mx/convert).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from densenet_convert import gluon_format, keras_format, torchvision_format
from densenet_convert.formats import FORMATS
from densenet_convert.recognise import preset_name, recognise_config
from densenet_spec.config import get_preset
from densenet_spec.params import param_specs

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "convert"
MODULES = {"torchvision": torchvision_format, "timm": torchvision_format, "gluon": gluon_format}


def _fixture(name):
    return json.loads((FIXTURES / f"{name}.json").read_text())


def _zeros(shape):
    return np.zeros(shape, np.float32)


@pytest.mark.parametrize(
    "name",
    [
        "torchvision_densenet121",
        "torchvision_densenet161",
        "timm_densenet121",
        "gluon_densenet121",
        "gluon_densenet161",
    ],
)
def test_state_dict_names_give_the_preset_and_come_back_exactly(name):
    doc = _fixture(name)
    module = MODULES[doc["format"]]
    official = {
        k: np.zeros(s, np.int64) if k.endswith("num_batches_tracked") else _zeros(s)
        for k, s in doc["tensors"]
    }
    canonical = module.to_canonical(official)
    config = recognise_config(canonical, FORMATS[doc["format"]].facts)
    assert preset_name(config) == doc["preset"]
    expected = get_preset(doc["preset"]).replace(**FORMATS[doc["format"]].facts.fields())
    assert config == expected
    back = module.from_canonical(canonical, config)
    assert [(k, list(v.shape)) for k, v in back.items()] == [(k, s) for k, s in doc["tensors"]]


def test_keras_layers_give_densenet121_with_keras_batch_norm_and_come_back_exactly():
    doc = _fixture("keras_densenet121")
    layers = {name: [_zeros(s) for s in shapes] for name, shapes in doc["layers"]}
    canonical = keras_format.to_canonical(layers)
    config = recognise_config(canonical, keras_format.FACTS)
    assert preset_name(config) == "densenet121"
    assert (config.bn_eps, config.bn_momentum, config.bn_running_var) == (1.001e-5, 0.01, "biased")
    back = keras_format.from_canonical(canonical, config)
    assert {k: [list(v.shape) for v in vs] for k, vs in back.items()} == {
        name: shapes for name, shapes in doc["layers"]
    }


def test_torchvision_old_style_keys_are_remapped():
    """Checkpoints from torchvision < 0.3 say denselayer1.norm.1.weight for norm1.weight."""
    doc = _fixture("torchvision_densenet121")
    old = {
        re.sub(r"(denselayer\d+)\.(norm|conv)([12])\.", r"\1.\2.\3.", k): _zeros(s)
        for k, s in doc["tensors"]
        if not k.endswith("num_batches_tracked")
    }
    assert any(".norm.1.weight" in k for k in old)
    config = recognise_config(torchvision_format.to_canonical(old), torchvision_format.FACTS)
    assert preset_name(config) == "densenet121"


def test_every_canonical_name_has_one_official_name_per_format():
    config = get_preset("tiny").replace(conv_bias=False)
    names = [s.name for s in param_specs(config)]
    for table in (
        torchvision_format.official_name,
        lambda n: gluon_format.official_name(n, len(config.block_config)),
    ):
        assert len({table(n) for n in names}) == len(names)


@pytest.mark.parametrize("fmt", ["torchvision", "timm", "keras", "gluon"])
def test_random_weights_round_trip_exactly_and_other_configs_are_refused(fmt):
    from densenet_convert.errors import FormatCannotHoldError
    from densenet_convert.formats import check_target
    from densenet_spec.params import init_params

    module = keras_format if fmt == "keras" else MODULES[fmt]
    held = (
        get_preset("densenet121")
        if fmt == "keras"
        else get_preset("tiny").replace(conv_bias=False, num_init_features=6)
    )
    params = init_params(held, seed=1, randomize_bn=True)
    back = module.to_canonical(module.from_canonical(params, held))
    assert back.keys() == params.keys()
    assert all(np.array_equal(back[k], params[k]) for k in params)
    for preset in ("d2l", "densenet_bc_100", "tiny"):
        with pytest.raises(FormatCannotHoldError, match="cannot hold"):
            check_target(fmt, get_preset(preset))
