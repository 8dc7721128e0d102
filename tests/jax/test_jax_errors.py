"""Issue 17 in JAX: every bad input a named error, nothing changed by a failed call, NaN
propagating through the max-pool as the oracle's does (both variants), and a symbolic batch
(jax.export) through the same input check."""

import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from densenet_testing import (  # noqa: E402
    NAN_WINDOWS,
    check_nan_logits,
    max_pool_reference,
    nan_images,
    nan_pool_input,
)
from flax import nnx  # noqa: E402

from densenet_jax import DenseNet, from_file, from_preset, make_model, xla_cpu  # noqa: E402
from densenet_jax.train import gradients, make_optimizer, train_step  # noqa: E402
from densenet_jax.weights import from_canonical, to_canonical  # noqa: E402
from densenet_spec.case import SGDConfig  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.errors import DTypeError, InputShapeError, LabelError  # noqa: E402
from densenet_spec.params import init_params  # noqa: E402

TINY = get_preset("tiny")  # ImageNet stem: conv 7x7/2, BN, ReLU, max-pool 3x3/2


def _model(variant="plain", dtype="float64"):
    model = nnx.eval_shape(lambda: make_model(TINY, variant, dtype=jnp.dtype(dtype)))
    from_canonical(model, init_params(TINY, 0, np.dtype(dtype), randomize_bn=True))
    return model


# ---- NaN propagates through the stem's max-pool (nnx.max_pool and xla_cpu.max_pool do)


@pytest.mark.parametrize("variant", ["plain", "fast"])
@pytest.mark.parametrize("where", ["one pixel", "all"])
def test_an_image_with_nan_gives_nan_logits_like_the_oracle(variant, where):
    params, x = nan_images(where)
    model = _model(variant)
    for training in (False, True):
        model.train() if training else model.eval()
        got = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(x.transpose(0, 2, 3, 1))))
        check_nan_logits(got, params, x, training)


@pytest.mark.parametrize("pool", [nnx.max_pool, xla_cpu.max_pool], ids=["nnx", "xla_cpu"])
def test_max_pools_give_nan_exactly_in_windows_holding_one(pool):
    x = nan_pool_input()
    got = np.asarray(pool(jnp.asarray(x.transpose(0, 2, 3, 1)), (3, 3), (2, 2), ((1, 1), (1, 1))))
    np.testing.assert_array_equal(got, max_pool_reference(x).transpose(0, 2, 3, 1))  # NHWC
    assert np.isnan(got).sum() == NAN_WINDOWS


# ---- dtypes


@pytest.mark.parametrize(
    "dtype", ["int32", "float16", np.int64, jnp.int32, jnp.bfloat16, "nonsense"]
)
def test_a_non_float_model_dtype_is_a_dtype_error_before_anything_is_built(dtype, monkeypatch):
    built = []

    def conv(*args, **kwargs):
        built.append(1)
        return nnx.Conv(*args, **kwargs)

    with pytest.raises(DTypeError, match="model dtype must be float32 or float64"):
        DenseNet(TINY, dtype=dtype, conv_layer=conv)
    monkeypatch.setattr(DenseNet, "__init__", lambda *a, **k: built.append(1))
    with pytest.raises(DTypeError, match="model dtype must be float32 or float64"):
        make_model(TINY, dtype=dtype)
    with pytest.raises(DTypeError, match="model dtype"):
        from_preset("tiny", dtype=dtype)
    with pytest.raises(DTypeError, match="model dtype"):
        from_file("/nonexistent.safetensors", dtype=dtype)  # before the file is read
    assert not built


def test_bad_inputs_are_named_errors():
    model = _model(dtype="float32")
    model.eval()
    with pytest.raises(DTypeError, match="input dtype float64 differs from the model's float32"):
        model(jnp.zeros((2, 32, 32, 3), jnp.float64))
    with pytest.raises(DTypeError, match="input dtype must be float32 or float64, got int32"):
        model(jnp.zeros((2, 32, 32, 3), jnp.int32))
    with pytest.raises(DTypeError, match="input dtype"):
        model.stage_outputs(np.zeros((2, 32, 32, 3), np.int8))
    with pytest.raises(DTypeError, match="jax.Array or NumPy"):
        model([[0.0]])
    with pytest.raises(InputShapeError, match="channels"):
        model(jnp.zeros((2, 32, 32, 1), jnp.float32))
    with pytest.raises(DTypeError, match="input dtype"):  # through the caller's jit too
        nnx.jit(lambda m, x: m(x))(model, jnp.zeros((2, 32, 32, 3), jnp.int32))


@pytest.mark.parametrize("variant", ["plain", "fast"])
def test_a_symbolic_batch_exports_through_the_input_check(variant):
    from jax import export

    model = _model(variant, "float32")
    model.eval()
    graphdef, state = nnx.split(model)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    (batch,) = export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32)
    exported = export.export(jax.jit(forward))(state, spec)
    for n in (1, 3):
        x = jnp.asarray(np.random.default_rng(n).standard_normal((n, 32, 32, 3)), jnp.float32)
        np.testing.assert_allclose(exported.call(state, x), model(x), rtol=1e-5, atol=1e-5)
    bad = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.int32)
    with pytest.raises(DTypeError, match="input dtype"):
        export.export(jax.jit(forward))(state, bad)


# ---- train_step and gradients validate labels first; a failed call changes nothing


BAD_LABELS = {
    "out of range": (jnp.array([7, 1]), "in 0..4"),
    "negative": (jnp.array([-1, 1]), "in 0..4"),
    "float": (jnp.array([1.5, 1.0]), "integer class indices"),
    "bool": (jnp.array([True, False]), "integer class indices"),
    "too many": (jnp.array([1, 1, 1]), r"shape \(2,\)"),
    "2-D": (jnp.array([[1], [1]]), r"shape \(2,\)"),
    "list": ([1, 1], r"jax\.Array or NumPy"),
}


@pytest.mark.parametrize("variant", ["plain", "fast"])
@pytest.mark.parametrize("kind", sorted(BAD_LABELS))
def test_a_train_step_with_bad_labels_raises_and_changes_nothing(variant, kind):
    model = _model(variant)
    optimizer = make_optimizer(model, SGDConfig())
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 32, 32, 3)))
    train_step(model, optimizer, x, jnp.array([0, 1]))  # momentum is live
    before = to_canonical(model)
    momentum = jax.tree.map(np.asarray, nnx.state(optimizer, nnx.OptState))
    labels, match = BAD_LABELS[kind]
    with pytest.raises(LabelError, match=match):
        train_step(model, optimizer, x, labels)
    with pytest.raises(LabelError, match=match):
        gradients(model, x, labels, True)
    for name, value in to_canonical(model).items():  # weights and running statistics
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    after = jax.tree.map(np.asarray, nnx.state(optimizer, nnx.OptState))
    jax.tree.map(np.testing.assert_array_equal, after, momentum)
    train_step(model, optimizer, x, jnp.array([0, 1]))  # still trains


def test_integer_labels_of_any_width_train():
    model = _model()
    x = jnp.asarray(np.random.default_rng(5).standard_normal((2, 32, 32, 3)))
    losses = [
        gradients(model, x, np.array([3, 1], dtype=dtype), False)[0]
        for dtype in (np.int64, np.int32, np.uint8)
    ]
    assert losses[0] == losses[1] == losses[2]


def test_a_train_step_with_a_bad_input_changes_nothing():
    model = _model()
    optimizer = make_optimizer(model, SGDConfig())
    before = to_canonical(model)
    y = jnp.array([0, 1])
    for x, error in [
        (jnp.zeros((2, 32, 32, 3), jnp.float32), DTypeError),
        (jnp.zeros((1, 7, 7, 3), jnp.float64), InputShapeError),
        ([[0.0]], DTypeError),
    ]:
        with pytest.raises(error):
            train_step(model, optimizer, x, y)
    for name, value in to_canonical(model).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
