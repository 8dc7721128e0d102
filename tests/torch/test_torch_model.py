"""The torch DenseNet's structure: parameter counts, canonical names, stages, input checks."""

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
from densenet_testing import PUBLISHED_PARAMETER_COUNTS  # noqa: E402

from densenet_spec.config import PRESETS, get_preset, min_image_size, spatial_sizes  # noqa: E402
from densenet_spec.errors import InputShapeError  # noqa: E402
from densenet_spec.params import count_parameters, param_specs, stage_names  # noqa: E402
from densenet_torch import DenseNet  # noqa: E402
from densenet_torch.batchnorm import BiasedVarBatchNorm2d, spec_batch_norm  # noqa: E402
from densenet_torch.layers import batch_norm  # noqa: E402
from densenet_torch.weights import to_canonical  # noqa: E402

VARIANTS = {
    "tiny": get_preset("tiny"),
    "d2l": get_preset("d2l"),
    "densenet_bc_100": get_preset("densenet_bc_100"),
    "cifar_no_bottleneck_no_bias": get_preset("tiny").replace(
        stem="cifar", bn_size=None, conv_bias=False, compression=1.0
    ),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameter_count_matches_spec(name):
    config = get_preset(name)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = DenseNet(config)
    count = sum(p.numel() for p in model.parameters())
    assert count == count_parameters(config)
    if name in PUBLISHED_PARAMETER_COUNTS:
        assert count == PUBLISHED_PARAMETER_COUNTS[name]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_state_dict_is_canonical_plus_counters(name):
    """Nothing in the model escapes the canonical table (so loading initialises everything)."""
    config = get_preset(name)
    with torch.device("meta"):
        model = DenseNet(config)
    keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert sorted(keys) == sorted(s.name for s in param_specs(config))  # registration order differs


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_to_canonical_names_and_shapes(name):
    config = VARIANTS[name]
    tensors = to_canonical(DenseNet(config))
    assert [(n, t.shape) for n, t in tensors.items()] == [
        (s.name, s.shape) for s in param_specs(config)
    ]
    assert all(isinstance(t, np.ndarray) and t.dtype == np.float32 for t in tensors.values())


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_stage_outputs_stages_and_shapes(name):
    config = VARIANTS[name]
    size = max(min_image_size(config), 8)
    x = torch.randn(2, config.in_channels, size, size)
    model = DenseNet(config).eval()
    with torch.no_grad():
        features = model.stage_outputs(x)
        logits = model(x)
    assert list(features) == stage_names(config)
    sizes = spatial_sizes(config, size, size)
    for stage, hw in sizes.items():
        assert tuple(features[stage].shape[2:]) == hw, stage
    for i, n in enumerate(config.block_config):
        for j in range(n):
            assert features[f"blocks.{i}.layers.{j}"].shape[1] == config.growth_rate
    assert features["head"].shape == (2, config.num_features)
    assert features["logits"].shape == (2, config.num_classes)
    assert torch.equal(features["logits"], logits)


def test_float64_model():
    config = get_preset("tiny")
    model = DenseNet(config).to(torch.float64)
    out = model(torch.randn(2, 3, 16, 16, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert {t.dtype for t in to_canonical(model).values()} == {np.dtype("float64")}


def test_every_parameter_gets_a_gradient():
    config = get_preset("tiny")
    model = DenseNet(config).train()
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


@pytest.mark.parametrize("norm_layer", [batch_norm, spec_batch_norm])
@pytest.mark.parametrize("rule", ["unbiased", "biased"])
def test_batch_norm_settings_follow_config(norm_layer, rule):
    config = get_preset("tiny").replace(bn_eps=1e-3, bn_momentum=0.01, bn_running_var=rule)
    bn = norm_layer(4, config)
    assert (bn.eps, bn.momentum) == (1e-3, 0.01)


def test_layers_batch_norm_is_torchs_own():
    """The teaching file's batch_norm chooses nothing: torch's BatchNorm2d whatever the rule."""
    for rule in ("unbiased", "biased"):
        assert type(batch_norm(4, get_preset("tiny").replace(bn_running_var=rule))) is (
            torch.nn.BatchNorm2d
        )


@pytest.mark.parametrize(
    "rule, cls", [("unbiased", torch.nn.BatchNorm2d), ("biased", BiasedVarBatchNorm2d)]
)
def test_default_norm_layer_follows_the_running_var_rule(rule, cls):
    """DenseNet(config) injects the biased-variance BatchNorm only when the config asks for it;
    an explicit norm_layer is used as given."""
    config = get_preset("tiny").replace(bn_running_var=rule)
    norms = [m for m in DenseNet(config).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and {type(m) for m in norms} == {cls}
    forced = DenseNet(config, norm_layer=batch_norm)
    assert {type(m) for m in forced.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {
        torch.nn.BatchNorm2d
    }


@pytest.mark.parametrize(
    "shape, training, match",
    [
        ((3, 16, 16), False, "rank 4"),
        ((2, 1, 16, 16), False, "channels"),
        ((2, 3, 2, 2), False, "too small"),
        ((1, 3, 5, 5), True, "more than one value"),
    ],
)
def test_bad_input_raises_input_shape_error(shape, training, match):
    model = DenseNet(get_preset("tiny")).train(training)
    x = torch.zeros(shape)
    with pytest.raises(InputShapeError, match=match):
        model(x)
    with pytest.raises(InputShapeError, match=match):
        model.stage_outputs(x)


@pytest.mark.parametrize("rule", ["unbiased", "biased"])
def test_batch_norm_running_var_rule(rule):
    """Normalisation always uses the biased batch variance; the running update follows the rule."""
    config = get_preset("tiny").replace(bn_running_var=rule)
    bn = spec_batch_norm(3, config).to(torch.float64).train()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    y = bn(x)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    n = 2 * 4 * 5
    batch_var = var * n / (n - 1) if rule == "unbiased" else var
    m = config.bn_momentum
    torch.testing.assert_close(bn.running_mean, m * mean, rtol=0, atol=1e-15)
    torch.testing.assert_close(bn.running_var, (1 - m) + m * batch_var, rtol=0, atol=1e-15)
    expected = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + config.bn_eps)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
