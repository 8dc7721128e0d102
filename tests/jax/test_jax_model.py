"""The JAX DenseNet's structure and edges: parameter counts, canonical names, padding, BatchNorm,
max-pool gradients, forward-mode differentiation, variants, named errors, weight files."""

import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from densenet_testing import PUBLISHED_PARAMETER_COUNTS  # noqa: E402
from flax import nnx  # noqa: E402

from densenet_jax import xla_cpu  # noqa: E402
from densenet_jax.batchnorm import BatchNorm  # noqa: E402
from densenet_jax.layers import batch_norm  # noqa: E402
from densenet_jax.memory_efficient import MemoryEfficientDenseBlock  # noqa: E402
from densenet_jax.model import DenseNet  # noqa: E402
from densenet_jax.train import eval_step, loss_fn  # noqa: E402
from densenet_jax.variants import make_model  # noqa: E402
from densenet_jax.weights import (  # noqa: E402
    LEAVES,
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
    UnknownVariantError,
    WeightDtypeError,
    WeightKeysError,
)
from densenet_spec.params import count_parameters, param_specs  # noqa: E402

# torchvision's densenet121/161/169/201 have exactly these; d2l's chapter 8.7 model 758,226


def abstract(config, dtype=jnp.float64, variant="plain", memory_efficient=False):
    """Shapes only (nnx.eval_shape): no arrays, no random initialisation."""
    return nnx.eval_shape(lambda: make_model(config, variant, memory_efficient, dtype=dtype))


def loaded(case, variant="plain"):
    model = abstract(case.config, jnp.dtype(case.dtype), variant)
    from_canonical(model, case.params)
    return model


def nnx_path(name: str, kind: str) -> tuple:
    """The NNX path of a canonical tensor: the same module path, NNX's leaf name (LEAVES)."""
    *modules, _ = name.split(".")
    return tuple(int(p) if p.isdigit() else p for p in modules) + (LEAVES[kind][0],)


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
    assert sorted(map(str, flat)) == sorted(str(nnx_path(s.name, s.kind)) for s in specs)
    for s in specs:
        axes = LEAVES[s.kind][1]
        want = s.shape if axes is None else tuple(s.shape[a] for a in axes)
        assert flat[nnx_path(s.name, s.kind)].shape == want, s.name


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
    same_conv = nnx.Conv(
        c.in_channels,
        c.num_init_features,
        (7, 7),
        (2, 2),
        padding="SAME",
        dtype=jnp.float64,
        param_dtype=jnp.float64,
        rngs=nnx.Rngs(0),
    )
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
    assert isinstance(bn, BatchNorm)
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


def _pool_case(shape, ties: bool):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape)
    if ties:
        x[0, :3, :3, 0] = 0.5  # one window, all tied
        x[0, 4, :, 1] = 1.25  # ties along a row, shared between neighbouring windows
    out_shape = (shape[0], (shape[1] + 1) // 2, (shape[2] + 1) // 2, shape[3])
    g = rng.normal(size=out_shape)
    want_y, backward = reference._max_pool(x.transpose(0, 3, 1, 2))
    want_g = backward(g.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    return jnp.asarray(x), jnp.asarray(g), want_y.transpose(0, 2, 3, 1), want_g


@pytest.mark.parametrize("shape", [(2, 9, 8, 3), (1, 16, 16, 4)])
def test_xla_cpu_max_pool_gradient_goes_to_the_first_maximum(shape):
    """The fast stem max-pool (custom backward) against the spec's: same output, each window's
    gradient on its first maximum in row-major order, ties included (odd and even sizes)."""
    x, g, want_y, want_g = _pool_case(shape, ties=True)
    pads = ((1, 1), (1, 1))
    y, vjp = jax.vjp(lambda x: xla_cpu.max_pool(x, (3, 3), (2, 2), pads), x)
    np.testing.assert_array_equal(np.asarray(y), want_y)
    np.testing.assert_array_equal(np.asarray(vjp(g)[0]), want_g)
    same = nnx.max_pool(x, (3, 3), (2, 2), pads)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(same))


@pytest.mark.parametrize("shape", [(2, 9, 8, 3), (1, 16, 16, 4)])
def test_plain_max_pool_gradient_matches_the_spec_without_ties(shape):
    """nnx.max_pool with JAX's own gradient (the plain model's): the spec's numbers wherever each
    window has one maximum. Tied windows may route the gradient to another maximum than the
    spec's first one; in the stem those are ReLU zeros, whose gradient is zero either way."""
    x, g, want_y, want_g = _pool_case(shape, ties=False)
    y, vjp = jax.vjp(lambda x: nnx.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))), x)
    np.testing.assert_array_equal(np.asarray(y), want_y)
    # An input in up to four windows sums their gradients in another order: rounding only.
    np.testing.assert_allclose(np.asarray(vjp(g)[0]), want_g, rtol=1e-15, atol=1e-15)


def _pure_forward(model):
    """The model as a pure function of (state, x) -> (logits, state after the call)."""
    graphdef, state = nnx.split(model)

    def forward(state, x):
        model = nnx.merge(graphdef, state)
        return model(x), nnx.state(model)

    return forward, state


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_plain_model_supports_jax_jvp(parity_case, mode):
    """Forward mode through the default model (every BatchNorm, the stem's max-pool, the
    concatenations): jax.jvp's tangent equals a central finite difference (float64)."""
    case = parity_case("tiny")
    model = loaded(case)
    getattr(model, mode)()
    forward, state = _pure_forward(model)
    x = jnp.asarray(case.x.transpose(0, 2, 3, 1))
    v = jnp.asarray(np.random.default_rng(1).normal(size=x.shape))
    zero = jax.tree.map(jnp.zeros_like, state)
    jvp = jax.jit(lambda x, v: jax.jvp(forward, (state, x), (zero, v)))
    (logits, new_state), (tangent, _) = jvp(x, v)
    h = 1e-6
    plus, minus = forward(state, x + h * v)[0], forward(state, x - h * v)[0]
    np.testing.assert_allclose(tangent, (plus - minus) / (2 * h), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(logits, forward(state, x)[0], rtol=1e-12, atol=1e-12)
    changed = not np.array_equal(new_state["stem"]["norm"]["mean"][...], model.stem.norm.mean[...])
    assert changed is (mode == "train")  # train mode updates the running statistics


def test_plain_model_supports_nnx_jvp_in_train_mode(parity_case):
    """nnx.jvp (tree mode) on the module itself: tangents out, running statistics updated."""
    case = parity_case("tiny")
    model = loaded(case)
    model.train()
    x = jnp.asarray(case.x.transpose(0, 2, 3, 1))
    before = np.asarray(model.stem.norm.mean[...])
    zero = jax.tree.map(jnp.zeros_like, model)
    logits, tangent = nnx.jvp(lambda m, x: m(x), (model, x), (zero, jnp.ones_like(x)), graph=False)
    assert tangent.shape == logits.shape == (2, case.config.num_classes)
    assert not np.array_equal(model.stem.norm.mean[...], before)


def test_plain_model_supports_jax_hessian(parity_case):
    """jax.hessian (forward over reverse) of the train-mode loss with respect to the stem's
    BatchNorm scale: every later layer in between. Symmetric, and equal to a central finite
    difference of jax.grad."""
    case = parity_case("tiny")
    model = loaded(case)
    model.train()
    graphdef, state = nnx.split(model)
    x, y = jnp.asarray(case.x.transpose(0, 2, 3, 1)), jnp.asarray(case.y)

    def loss(scale):
        model = nnx.merge(graphdef, state, copy=True)
        model.stem.norm.scale[...] = scale
        return loss_fn(model(x), y)

    scale = np.asarray(state["stem"]["norm"]["scale"][...])
    hessian = np.asarray(jax.jit(jax.hessian(loss))(scale))
    assert hessian.shape == (scale.size, scale.size)
    np.testing.assert_allclose(hessian, hessian.T, rtol=1e-9, atol=1e-12)
    grad, h = jax.jit(jax.grad(loss)), 1e-5
    eye = np.eye(scale.size)
    columns = [(grad(scale + h * e) - grad(scale - h * e)) / (2 * h) for e in eye]
    np.testing.assert_allclose(hessian, np.stack(columns, axis=1), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("variant, memory_efficient", [("fast", False), ("plain", True)])
def test_fast_and_memory_efficient_models_are_reverse_mode_only(variant, memory_efficient):
    """Their jax.custom_vjp kernels (xla_cpu.py on CPU, memory_efficient.py) refuse forward
    mode, as their docstrings say; reverse mode is exact (the parity tests)."""
    config = get_preset("tiny")
    model = nnx.eval_shape(
        lambda: make_model(config, variant, memory_efficient, dtype=jnp.float64, platform="cpu")
    )
    model.eval()
    forward, state = _pure_forward(model)

    def jvp(state, x):
        return jax.jvp(forward, (state, x), (jax.tree.map(jnp.zeros_like, state), x))

    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float64)
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jit(jvp).lower(state, x)  # raised when lowered (jax.eval_shape passes)


def test_make_model_variants():
    """plain is DenseNet(config); fast injects xla_cpu.py's kernels on CPU only; unknown
    variants are named errors."""
    config = get_preset("tiny")
    plain = abstract(config)
    assert type(plain) is DenseNet and type(plain.stem.conv) is nnx.Conv
    assert plain.stem.max_pool is nnx.max_pool and type(plain.head.norm) is BatchNorm
    fast = nnx.eval_shape(lambda: make_model(config, "fast", platform="cpu"))
    assert type(fast.stem.conv) is xla_cpu.Conv and fast.stem.max_pool is xla_cpu.max_pool
    assert type(fast.blocks[0].layers[0].norm1) is xla_cpu.BatchNorm
    elsewhere = nnx.eval_shape(lambda: make_model(config, "fast", platform="gpu"))
    assert nnx.graphdef(elsewhere) == nnx.graphdef(nnx.eval_shape(lambda: make_model(config)))
    efficient = abstract(config, variant="fast", memory_efficient=True)
    assert all(type(b) is MemoryEfficientDenseBlock for b in efficient.blocks)
    with pytest.raises(UnknownVariantError, match="unknown variant 'turbo'; known: plain, fast"):
        make_model(config, "turbo")


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
        tiny_model.stage_outputs(x)
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
