"""The MXNet Gluon DenseNet's structure: parameter counts, canonical names, stages, input checks,
weight files, named errors, and the variants make_model builds."""

import pytest

mx = pytest.importorskip("mxnet")

import numpy as np  # noqa: E402
from densenet_testing import PUBLISHED_PARAMETER_COUNTS  # noqa: E402
from mxnet import autograd, nd  # noqa: E402

from densenet_mx import DenseNet, make_model  # noqa: E402
from densenet_mx.adapter import environment  # noqa: E402
from densenet_mx.layers import batch_norm  # noqa: E402
from densenet_mx.running_stats import RunningStatsCorrection  # noqa: E402
from densenet_mx.train import gradients  # noqa: E402
from densenet_mx.variants import FAST_HYBRIDIZE  # noqa: E402
from densenet_mx.weights import (  # noqa: E402
    from_canonical,
    load_weights,
    save_weights,
    to_canonical,
)
from densenet_spec import weightfile  # noqa: E402
from densenet_spec.config import PRESETS, get_preset, min_image_size, spatial_sizes  # noqa: E402
from densenet_spec.errors import (  # noqa: E402
    ConfigMismatchError,
    DeviceUnavailableError,
    InputShapeError,
    UnknownVariantError,
    WeightDtypeError,
    WeightKeysError,
)
from densenet_spec.params import (  # noqa: E402
    count_parameters,
    init_params,
    param_specs,
    stage_names,
)

VARIANTS = {
    "tiny": get_preset("tiny"),
    "d2l": get_preset("d2l"),
    "densenet_bc_100": get_preset("densenet_bc_100"),
    "cifar_no_bottleneck_no_bias": get_preset("tiny").replace(
        stem="cifar", bn_size=None, conv_bias=False, compression=1.0
    ),
}


def _model(config, dtype="float64", hybridize=False):
    model = DenseNet(config)
    model.initialize()
    model.cast(dtype)
    if hybridize:
        model.hybridize()
    return model


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameter_count_matches_spec(name):
    config = get_preset(name)
    model = DenseNet(config)  # explicit in_channels: every shape is known before initialize()
    params = model.collect_params().values()
    count = sum(int(np.prod(p.shape)) for p in params if p.grad_req != "null")
    assert count == count_parameters(config)
    if name in PUBLISHED_PARAMETER_COUNTS:
        assert count == PUBLISHED_PARAMETER_COUNTS[name]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_to_canonical_names_and_shapes(name):
    """Nothing in the model escapes the canonical table (so loading initialises everything)."""
    config = VARIANTS[name]
    model = DenseNet(config)
    model.initialize()
    tensors = to_canonical(model)
    assert [(n, t.shape) for n, t in tensors.items()] == [
        (s.name, s.shape) for s in param_specs(config)
    ]
    assert len(model.collect_params().keys()) == len(tensors)
    assert all(isinstance(t, np.ndarray) and t.dtype == np.float32 for t in tensors.values())


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_stage_outputs_and_shapes(name, hybridize):
    config = VARIANTS[name]
    size = max(min_image_size(config), 8)
    x = nd.array(np.random.default_rng(0).standard_normal((2, config.in_channels, size, size)))
    model = _model(config, "float32", hybridize)
    features = model.stage_outputs(x)
    logits = model(x)
    assert list(features) == stage_names(config)
    for stage, hw in spatial_sizes(config, size, size).items():
        assert tuple(features[stage].shape[2:]) == hw, stage
    for i, n in enumerate(config.block_config):
        for j in range(n):
            assert features[f"blocks.{i}.layers.{j}"].shape[1] == config.growth_rate
    assert features["head"].shape == (2, config.num_features)
    assert features["logits"].shape == (2, config.num_classes)
    np.testing.assert_array_equal(features["logits"].asnumpy(), logits.asnumpy())


def test_float64_model():
    model = _model(get_preset("tiny"), "float64")
    out = model(nd.array(np.ones((2, 3, 16, 16)), dtype="float64"))
    assert out.dtype == np.float64
    assert {t.dtype for t in to_canonical(model).values()} == {np.dtype("float64")}


def test_every_parameter_gets_a_gradient():
    config = get_preset("tiny")
    model = _model(config)
    x = nd.array(np.random.default_rng(0).standard_normal((2, 3, 16, 16)), dtype="float64")
    _, grad_input, grads = gradients(model, x, nd.array([0, 1], dtype="int64"), training=True)
    assert grad_input.shape == x.shape
    largest = {k: float(np.abs(g.asnumpy()).max()) for k, g in grads.items()}
    # conv biases reach the loss only through a train-mode BN, which cancels them: rounding noise
    zero = [k for k in grads if ".conv" in k and k.endswith(".bias")]
    assert all(largest[k] > 0 for k in grads if k not in zero)
    assert max(largest[k] for k in zero) < 1e-12 * max(largest.values())


def test_batch_norm_settings_follow_config():
    config = get_preset("tiny").replace(bn_eps=1e-3, bn_momentum=0.01)
    bn = batch_norm(4, config)
    attrs = bn(mx.sym.var("x")).list_attr()  # the operator's settings, read off its symbol
    assert float(attrs["eps"]) == 1e-3
    assert float(attrs["momentum"]) == pytest.approx(0.99)  # Gluon: weight of the old statistic
    assert bn.gamma.shape == (4,)  # explicit in_channels


@pytest.mark.parametrize("variant", ["plain", "fast"])
def test_memory_efficient_is_not_available(variant):
    with pytest.raises(NotImplementedError, match="MXNET_BACKWARD_DO_MIRROR"):
        DenseNet(get_preset("tiny"), memory_efficient=True)
    with pytest.raises(NotImplementedError, match="MXNET_BACKWARD_DO_MIRROR"):
        make_model(get_preset("tiny"), variant, memory_efficient=True)


def test_make_model_plain_is_the_teaching_model():
    """plain: DenseNet(config) initialized in the dtype, imperative, the spec's running-statistic
    rule injected by default (DenseNet(config) alone passes parity)."""
    config = get_preset("tiny")
    model = make_model(config, dtype="float64")
    assert type(model) is DenseNet
    assert isinstance(model.running_stats, RunningStatsCorrection)
    assert {np.dtype(p.dtype) for p in model.collect_params().values()} == {np.dtype("float64")}
    assert not hasattr(model.stem, "pad")  # the adapter's self-check mutation adds one
    assert isinstance(DenseNet(config).running_stats, RunningStatsCorrection)
    assert DenseNet(config, running_stats=None).running_stats is None  # MXNet's own rule


def test_make_model_fast_is_hybridized_statically_and_computes_the_same_logits(tmp_path):
    config = get_preset("tiny")
    params = init_params(config, seed=3, dtype=np.float32, randomize_bn=True)
    plain, fast = make_model(config), make_model(config, "fast")
    assert FAST_HYBRIDIZE == {"static_alloc": True, "static_shape": True}
    x = nd.array(np.random.default_rng(0).standard_normal((2, 3, 32, 32)))
    for model in (plain, fast):
        from_canonical(model, params)
    np.testing.assert_array_equal(fast(x).asnumpy(), plain(x).asnumpy())
    fast.export(str(tmp_path / "fast"))  # export needs a hybridized block's traced graph
    with pytest.raises(RuntimeError, match="hybridize"):
        plain.export(str(tmp_path / "plain"))


def test_make_model_refuses_an_unknown_variant():
    with pytest.raises(UnknownVariantError, match="unknown variant 'fastest'; known: plain, fast"):
        make_model(get_preset("tiny"), "fastest")


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
    model = _model(get_preset("tiny"), "float32", hybridize=True)
    x = nd.zeros(shape)
    with autograd.train_mode() if training else autograd.predict_mode():
        with pytest.raises(InputShapeError, match=match):
            model(x)
        with pytest.raises(InputShapeError, match=match):
            model.stage_outputs(x)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    config = get_preset("tiny")
    params = init_params(config, seed=4, dtype=np.float64, randomize_bn=True)
    a = _model(config, hybridize=True)
    from_canonical(a, params)
    save_weights(a, tmp_path / "w.safetensors")
    b = _model(config)
    load_weights(b, tmp_path / "w.safetensors")
    for name, t in to_canonical(b).items():
        np.testing.assert_array_equal(t, params[name], err_msg=name)
    x = nd.array(np.random.default_rng(1).standard_normal((2, 3, 32, 32)), dtype="float64")
    np.testing.assert_array_equal(a(x).asnumpy(), b(x).asnumpy())


def test_weight_errors_are_named(tmp_path):
    config = get_preset("tiny")
    model = _model(config, "float64")
    params = init_params(config, seed=0, dtype=np.float64)
    missing = {k: v for k, v in params.items() if k != "head.fc.bias"}
    with pytest.raises(WeightKeysError, match="missing keys: head.fc.bias"):
        from_canonical(model, missing)
    with pytest.raises(WeightDtypeError, match="float32"):
        from_canonical(model, {k: v.astype(np.float32) for k, v in params.items()})
    other = config.replace(num_classes=7)
    other_params = init_params(other, 0, np.float64)
    weightfile.save_weights(tmp_path / "other.safetensors", other_params, other)
    with pytest.raises(ConfigMismatchError, match="num_classes"):
        load_weights(model, tmp_path / "other.safetensors")


@pytest.mark.parametrize("device", ["gpu", "tpu"])
def test_absent_device_raises_device_unavailable(device):
    if device == "gpu" and mx.context.num_gpus() > 0:
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceUnavailableError, match=f"mx: no {device} device"):
        environment(device, "float32")
