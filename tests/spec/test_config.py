"""Config, presets and canonical parameter table: the contract every framework builds from."""

import pytest
from densenet_testing import PUBLISHED_PARAMETER_COUNTS
from hypothesis import given, settings
from hypothesis import strategies as st

from densenet_spec.config import (
    PRESETS,
    DenseNetConfig,
    check_input_shape,
    get_preset,
    min_image_size,
    spatial_sizes,
)
from densenet_spec.errors import ConfigError, InputShapeError, UnknownPresetError
from densenet_spec.params import count_parameters, param_specs, stage_names


@pytest.mark.parametrize("name", PUBLISHED_PARAMETER_COUNTS)
def test_published_parameter_counts(name):
    assert count_parameters(get_preset(name)) == PUBLISHED_PARAMETER_COUNTS[name]


def test_bc100_and_tiny_counts_from_independent_arithmetic():
    # DenseNet-BC-100 (k=12): stem 3x3 conv 3->24;
    # per layer BN(c) + 1x1 c->48 + BN(48) + 3x3 48->12.
    k, total, c = 12, 24 * 3 * 9, 24
    for block in range(3):
        for _ in range(16):
            total += 2 * c + c * 48 + 2 * 48 + 48 * 9 * k
            c += k
        if block < 2:
            total += 2 * c + c * (c // 2)
            c //= 2
    total += 2 * c + c * 10 + 10
    assert c == 342
    assert count_parameters(get_preset("densenet_bc_100")) == total == 769_162


def test_d2l_channels_and_stage_shapes():
    cfg = get_preset("d2l")
    assert cfg.block_in_channels() == [64, 96, 112, 120]
    assert cfg.num_features == 248
    sizes = spatial_sizes(cfg, 96, 96)
    assert sizes["stem"] == (24, 24) and sizes["transitions.0"] == (12, 12)
    assert sizes["transitions.2"] == (3, 3) and sizes["blocks.3"] == (3, 3)


def test_stage_names_in_forward_order():
    names = stage_names(get_preset("tiny"))
    assert names == [
        "stem",
        "blocks.0.layers.0",
        "blocks.0.layers.1",
        "blocks.0",
        "transitions.0",
        "blocks.1.layers.0",
        "blocks.1.layers.1",
        "blocks.1",
        "head",
        "logits",
    ]


def test_tiny_uses_floor_of_theta_times_channels():
    cfg = get_preset("tiny")  # 7 + 2 * 3 = 13 channels -> floor(6.5) = 6
    assert cfg.block_in_channels() == [7, 6]
    shapes = {s.name: s.shape for s in param_specs(cfg)}
    assert shapes["transitions.0.conv.weight"] == (6, 13, 1, 1)
    assert shapes["blocks.0.layers.1.conv1.weight"] == (6, 10, 1, 1)  # bn_size 2 * k 3


def test_canonical_names_for_plain_and_bottleneck_layers():
    d2l = {s.name for s in param_specs(get_preset("d2l"))}
    assert {"stem.conv.weight", "stem.conv.bias", "stem.norm.running_var"} <= d2l
    assert "blocks.0.layers.0.norm.weight" in d2l and "blocks.0.layers.0.conv.bias" in d2l
    assert "head.fc.weight" in d2l and not any(".conv1." in n for n in d2l)
    bc = {s.name for s in param_specs(get_preset("densenet_bc_100"))}
    assert "stem.norm.weight" not in bc  # CIFAR stem: a single conv
    assert "blocks.2.layers.15.conv2.weight" in bc and "stem.conv.bias" not in bc


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"growth_rate": 0}, "growth_rate"),
        ({"growth_rate": -3}, "growth_rate"),
        ({"block_config": ()}, "block_config"),
        ({"block_config": (4, 0)}, "block_config[1]"),
        ({"compression": 0.0}, "compression"),
        ({"compression": 1.5}, "compression"),
        ({"stem": "resnet"}, "stem"),
        ({"bn_size": 0}, "bn_size"),
        ({"bn_eps": 0.0}, "bn_eps"),
        ({"bn_momentum": 1.5}, "bn_momentum"),
        ({"bn_running_var": "sample"}, "bn_running_var"),
        ({"in_channels": 2.5}, "in_channels"),
        ({"conv_bias": 1}, "conv_bias"),
        (
            {"num_init_features": 1, "growth_rate": 1, "compression": 0.1},
            "transition 0 would have 0",
        ),
    ],
)
def test_invalid_configs_name_the_field(changes, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        DenseNetConfig(**changes)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(UnknownPresetError, match="densenet121") as e:
        get_preset("densenet122")
    assert "densenet122" in str(e.value)


@pytest.mark.parametrize("name", PRESETS)
def test_config_json_round_trip(name):
    cfg = get_preset(name)
    assert DenseNetConfig.from_json(cfg.to_json()) == cfg


def test_unknown_config_field_is_named():
    with pytest.raises(ConfigError, match="drop_rate"):
        DenseNetConfig.from_dict({**get_preset("d2l").to_dict(), "drop_rate": 0.2})


def test_input_shape_errors():
    cfg = get_preset("d2l")
    check_input_shape(cfg, (2, 1, 96, 96))
    with pytest.raises(InputShapeError, match="rank 4"):
        check_input_shape(cfg, (1, 96, 96))
    with pytest.raises(InputShapeError, match="3 channels, the model expects 1"):
        check_input_shape(cfg, (2, 3, 96, 96))
    with pytest.raises(InputShapeError, match="too small.*29x29"):
        check_input_shape(cfg, (2, 1, 28, 28))
    with pytest.raises(InputShapeError, match="more than one value per channel"):
        check_input_shape(cfg, (1, 1, 32, 32), training=True)
    check_input_shape(cfg, (2, 96, 96, 1), "NHWC")


configs = st.builds(
    DenseNetConfig,
    growth_rate=st.integers(1, 48),
    block_config=st.lists(st.integers(1, 6), min_size=1, max_size=5).map(tuple),
    num_init_features=st.integers(1, 96),
    stem=st.sampled_from(["imagenet", "cifar"]),
    bn_size=st.one_of(st.none(), st.integers(1, 4)),
    compression=st.floats(0.5, 1.0),
    conv_bias=st.booleans(),
    in_channels=st.integers(1, 4),
    num_classes=st.integers(1, 20),
)


@settings(max_examples=200, deadline=None)
@given(configs)
def test_parameter_table_is_consistent_for_any_config(cfg):
    specs = param_specs(cfg)
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    shapes = {s.name: s.shape for s in specs}
    # Every conv's input width is the channel count the previous stage produced.
    assert shapes["head.fc.weight"] == (cfg.num_classes, cfg.num_features)
    for i, c_in in enumerate(cfg.block_in_channels()):
        first = "conv" if cfg.bn_size is None else "conv1"
        assert shapes[f"blocks.{i}.layers.0.{first}.weight"][1] == c_in
    # Trainable count: convs + linear + BN gamma/beta.
    by_hand = sum(
        (s.shape[0] * s.shape[1] * s.shape[2] * s.shape[3])
        if len(s.shape) == 4
        else (s.shape[0] * s.shape[1])
        if len(s.shape) == 2
        else s.shape[0]
        for s in specs
        if s.trainable
    )
    assert count_parameters(cfg) == by_hand
    m = min_image_size(cfg)
    check_input_shape(cfg, (1, cfg.in_channels, m, m))
    if m > 1:
        with pytest.raises(InputShapeError):
            check_input_shape(cfg, (1, cfg.in_channels, m - 1, m - 1))


@pytest.mark.parametrize(
    "size, kernel, stride, pads",
    [
        (32, 7, 2, (2, 3)),
        (33, 7, 2, (3, 3)),
        (16, 3, 2, (0, 1)),
        (17, 3, 2, (1, 1)),
        (5, 3, 1, (1, 1)),
    ],
)
def test_same_pads_match_tensorflow_rule(size, kernel, stride, pads):
    """TF's 'same': out = ceil(n / s), total = (out - 1) * s + k - n, the extra pixel after."""
    from densenet_spec.config import same_pads

    assert same_pads(size, kernel, stride) == pads
