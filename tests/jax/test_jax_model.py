"""The JAX DenseNet's structure and edges: parameter counts, canonical names, padding, BatchNorm,
named errors, weight files."""

import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from densenet_jax.layers import batch_norm  # noqa: E402
from densenet_jax.model import DenseNet, _max_pool  # noqa: E402
from densenet_jax.train import eval_step  # noqa: E402
from densenet_jax.weights import (  # noqa: E402
    _LEAVES,
    _nnx_path,
    from_canonical,
    load_weights,
    save_weights,
    to_canonical,
)
from densenet_spec import reference  # noqa: E402
from densenet_spec.compare import assert_close, rel_errors  # noqa: E402
from densenet_spec.config import PRESETS, get_preset, min_image_size  # noqa: E402
from densenet_spec.errors import (  # noqa: E402
    ConfigMismatchError,
    InputShapeError,
    WeightDtypeError,
    WeightKeysError,
)
from densenet_spec.params import count_parameters, param_specs  # noqa: E402
from densenet_spec.testing import PUBLISHED_PARAMETER_COUNTS  # noqa: E402

# torchvision's densenet121/161/169/201 have exactly these; d2l's chapter 8.7 model 758,226


def abstract(config, dtype=jnp.float64, memory_efficient=False):
    """Shapes only (nnx.eval_shape): no arrays, no random initialisation."""
    return nnx.eval_shape(lambda: DenseNet(config, memory_efficient, dtype=dtype))


def loaded(case):
    model = abstract(case.config, jnp.dtype(case.dtype))
    from_canonical(model, case.params)
    return model


def nhwc(x):
    return jnp.asarray(x.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameter_count_and_names_match_spec(name):
    config = get_preset(name)
    model = abstract(config)
    count = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == count_parameters(config)
    if name in PUBLISHED_PARAMETER_COUNTS:
        assert count == PUBLISHED_PARAMETER_COUNTS[name]
    # Every Param and BatchStat is one canonical tensor (so loading sets everything).
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))))
    specs = param_specs(config)
    assert sorted(map(str, flat)) == sorted(str(_nnx_path(s)) for s in specs)
    for s in specs:
        axes = _LEAVES[s.kind][1]
        want = s.shape if axes is None else tuple(s.shape[a] for a in axes)
        assert flat[_nnx_path(s)].shape == want, s.name


def test_d2l_has_exactly_758226_parameters():
    model = abstract(get_preset("d2l"))
    assert sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))) == 758226


def test_same_padding_would_change_the_stem(parity_case, oracle_results):
    """'SAME' pads the stride-2 stem ops asymmetrically; the explicit pads match the oracle."""
    assert jax.lax.padtype_to_pads((32, 32), (7, 7), (2, 2), "SAME") == [(2, 3), (2, 3)]
    assert jax.lax.padtype_to_pads((16, 16), (3, 3), (2, 2), "SAME") == [(0, 1), (0, 1)]
    case = parity_case("tiny")
    model = loaded(case)
    model.eval()
    x, oracle = nhwc(case.x), {"eval/stem": oracle_results("tiny")["eval/stem"]}
    ours = np.asarray(model.stem(x)).transpose(0, 3, 1, 2)
    assert_close({"eval/stem": ours}, oracle, "float64")

    c = case.config
    same_conv = nnx.Conv(c.in_channels, c.num_init_features, (7, 7), (2, 2), padding="SAME",
                         dtype=jnp.float64, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    same_conv.kernel[...] = model.stem.conv.kernel[...]
    same_conv.bias[...] = model.stem.conv.bias[...]
    h = nnx.relu(model.stem.norm(same_conv(x)))
    same = np.asarray(nnx.max_pool(h, (3, 3), (2, 2), "SAME")).transpose(0, 3, 1, 2)
    assert same.shape == ours.shape  # same shape, different numbers everywhere
    assert rel_errors({"eval/stem": same}, oracle)["eval/stem"] > 1e-2


def test_batch_norm_follows_the_spec():
    """eps, torch-convention momentum, unbiased running variance, biased normalisation."""
    config = get_preset("tiny").replace(bn_eps=1e-3, bn_momentum=0.25)
    bn = batch_norm(3, config, dtype=jnp.float64)
    assert bn.momentum == 0.75  # Flax's convention: the weight of the old running value
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, (2, 3, 4, 3))
    bn.mean[...], bn.var[...] = jnp.full(3, 0.5), jnp.full(3, 2.0)
    y = np.asarray(bn(jnp.asarray(x)))  # a new BatchNorm is in train mode, like torch's
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3), rtol=1e-12, atol=1e-12)
    n = 2 * 3 * 4
    np.testing.assert_allclose(bn.mean[...], 0.75 * 0.5 + 0.25 * mean, rtol=1e-13)
    np.testing.assert_allclose(bn.var[...], 0.75 * 2.0 + 0.25 * var * n / (n - 1), rtol=1e-13)

    biased = batch_norm(3, config.replace(bn_running_var="biased"), dtype=jnp.float64)
    biased(jnp.asarray(x))
    np.testing.assert_allclose(biased.var[...], 0.75 * 1.0 + 0.25 * var, rtol=1e-13)

    bn.eval()
    running_mean, running_var = np.asarray(bn.mean[...]), np.asarray(bn.var[...])
    y = np.asarray(bn(jnp.asarray(x)))
    np.testing.assert_allclose(y, (x - running_mean) / np.sqrt(running_var + 1e-3), rtol=1e-12)
    np.testing.assert_array_equal(bn.mean[...], running_mean)  # eval never updates


@pytest.mark.parametrize("shape", [(2, 9, 8, 3), (1, 16, 16, 4)])
def test_max_pool_gradient_goes_to_the_first_maximum(shape):
    """The stem's max-pool (custom backward) against the spec's: same output, each window's
    gradient on its first maximum in row-major order, ties included (odd and even sizes)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape)
    x[0, :3, :3, 0] = 0.5  # one window, all tied
    x[0, 4, :, 1] = 1.25  # ties along a row, shared between neighbouring windows
    out_shape = (shape[0], (shape[1] + 1) // 2, (shape[2] + 1) // 2, shape[3])
    g = rng.normal(size=out_shape)
    y, vjp = jax.vjp(lambda x: _max_pool(x, 3, 2, 1), jnp.asarray(x))
    want_y, backward = reference._max_pool(x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(np.asarray(y), want_y.transpose(0, 2, 3, 1))
    want_g = backward(g.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(g))[0]), want_g)
    same = nnx.max_pool(jnp.asarray(x), (3, 3), (2, 2), ((1, 1), (1, 1)))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(same))


def test_train_and_eval_switch_every_batch_norm():
    model = abstract(get_preset("tiny"))
    norms = [m for _, m in nnx.iter_modules(model) if hasattr(m, "use_running_average")]
    assert len(norms) > 5 and not any(m.use_running_average for m in norms)  # starts in train
    model.eval()
    assert all(m.use_running_average for m in norms)
    model.train()
    assert not any(m.use_running_average for m in norms)


@pytest.fixture(scope="module")
def tiny_model(parity_case):
    return loaded(parity_case("tiny"))


@pytest.mark.parametrize(
    "shape, message",
    [
        ((2, 32, 32), "rank 4"),
        ((2, 32, 32, 1), "1 channels, the model expects 3"),
        ((2, 3, 32, 32), "32 channels"),  # NCHW handed to an NHWC model
        ((2, 4, 4, 3), "too small"),
    ],
)
def test_bad_input_raises_input_shape_error(tiny_model, shape, message):
    tiny_model.eval()
    with pytest.raises(InputShapeError, match=message):
        tiny_model(jnp.zeros(shape, jnp.float64))


def test_train_mode_batch_that_pools_to_one_value_is_rejected(tiny_model):
    size = min_image_size(tiny_model.config)
    x = jnp.zeros((1, size, size, 3), jnp.float64)
    tiny_model.train()
    with pytest.raises(InputShapeError, match="more than one value per channel"):
        tiny_model.forward_features(x)
    tiny_model.eval()  # eval mode normalises with running statistics: one image is fine
    logits = nnx.eval_shape(lambda model, x: model(x), tiny_model, x)
    assert logits.shape == (1, tiny_model.config.num_classes)


def test_weight_tensors_are_validated(parity_case):
    case = parity_case("tiny")
    model = abstract(case.config)
    params = dict(case.params)
    missing = {k: v for k, v in params.items() if k != "head.fc.bias"}
    with pytest.raises(WeightKeysError, match="missing keys: head.fc.bias"):
        from_canonical(model, missing)
    with pytest.raises(WeightKeysError, match="unexpected keys: head.extra"):
        from_canonical(model, {**params, "head.extra": params["head.fc.bias"]})
    with pytest.raises(WeightKeysError, match="stem.conv.weight has shape"):
        from_canonical(model, {**params, "stem.conv.weight": params["stem.conv.weight"][:, :2]})
    with pytest.raises(WeightDtypeError, match="model runs in float64"):
        from_canonical(model, {k: v.astype(np.float32) for k, v in params.items()})


def test_weight_file_round_trip_and_config_mismatch(parity_case, tiny_model, tmp_path):
    case = parity_case("tiny")
    path = tmp_path / "tiny.safetensors"
    save_weights(tiny_model, path)
    again = abstract(case.config)
    load_weights(again, path)
    before, after = to_canonical(tiny_model), to_canonical(again)
    assert list(after) == [s.name for s in param_specs(case.config)]
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
        np.testing.assert_array_equal(after[name], case.params[name])
    x = nhwc(case.x)
    np.testing.assert_array_equal(eval_step(again, x), eval_step(tiny_model, x))

    other = abstract(case.config.replace(growth_rate=4))
    with pytest.raises(ConfigMismatchError, match="growth_rate: file has 3, model has 4"):
        load_weights(other, path)
    float32_model = abstract(case.config, jnp.float32)
    with pytest.raises(WeightDtypeError):
        load_weights(float32_model, path)
