"""Issue 17 in MXNet: every bad input a named error, nothing changed by a failed call, and NaN
propagating through the max-pool as the oracle's does (both variants)."""

import pytest

mx = pytest.importorskip("mxnet")

import numpy as np  # noqa: E402
from densenet_testing import (  # noqa: E402
    NAN_WINDOWS,
    check_nan_logits,
    max_pool_reference,
    nan_images,
    nan_pool_input,
)
from mxnet import autograd, gluon, nd  # noqa: E402

from densenet_mx import DenseNet, from_preset, load, make_model  # noqa: E402
from densenet_mx.canonical import UninitializedModelError  # noqa: E402
from densenet_mx.max_pool import NaNMaxPool2D  # noqa: E402
from densenet_mx.train import gradients, make_optimizer, train_step  # noqa: E402
from densenet_mx.weights import from_canonical, save_weights, to_canonical  # noqa: E402
from densenet_spec.case import SGDConfig  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.errors import DTypeError, InputShapeError, LabelError  # noqa: E402
from densenet_spec.params import init_params  # noqa: E402

TINY = get_preset("tiny")  # ImageNet stem: conv 7x7/2, BN, ReLU, max-pool 3x3/2


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


# ---- NaN propagates through the stem's max-pool


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("hybridize", [None, {}, {"static_alloc": True, "static_shape": True}])
def test_nan_max_pool_is_gluons_max_pool_bit_for_bit_without_nan(dtype, hybridize):
    """Values and input gradients equal nn.MaxPool2D's, bit for bit (signed zeros included)."""
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((2, 3, 9, 9)), 0).astype(dtype)
    x[0, 0, :2, :2] = -0.0
    x[1, 2, 3, 3] = np.inf
    g = rng.standard_normal((2, 3, 5, 5)).astype(dtype)
    results = []
    for pool in (gluon.nn.MaxPool2D(3, 2, 1), NaNMaxPool2D(3, 2, 1)):
        if hybridize is not None:
            pool.hybridize(**hybridize)
        xx = nd.array(x, dtype=dtype)
        xx.attach_grad()
        with autograd.record():
            y = pool(xx)
        y.backward(nd.array(g, dtype=dtype))
        results.append((y.asnumpy(), xx.grad.asnumpy()))
    (y0, g0), (y1, g1) = results
    np.testing.assert_array_equal(_bits(y1), _bits(y0))
    np.testing.assert_array_equal(_bits(g1), _bits(g0))


@pytest.mark.parametrize("hybridize", [False, True])
def test_nan_max_pool_gives_nan_exactly_in_windows_holding_one(hybridize):
    x = nan_pool_input()
    pool = NaNMaxPool2D(3, 2, 1)
    if hybridize:
        pool.hybridize()
    got = pool(nd.array(x, dtype="float64")).asnumpy()
    np.testing.assert_array_equal(got, max_pool_reference(x))
    assert np.isnan(got).sum() == NAN_WINDOWS
    plain = gluon.nn.MaxPool2D(3, 2, 1)(nd.array(x, dtype="float64")).asnumpy()
    assert not np.isnan(plain).any()  # MXNet's own pool skips NaN: why NaNMaxPool2D exists


@pytest.mark.parametrize("variant", ["plain", "fast"])
@pytest.mark.parametrize("where", ["one pixel", "all"])
def test_an_image_with_nan_gives_nan_logits_like_the_oracle(variant, where):
    params, x = nan_images(where)
    model = make_model(TINY, variant, dtype="float64")
    from_canonical(model, params)
    for training in (False, True):
        with autograd.train_mode() if training else autograd.predict_mode():
            got = model(nd.array(x, dtype="float64")).asnumpy()
        check_nan_logits(got, params, x, training)


def test_the_plain_max_pool_can_still_be_injected():
    """DenseNet(config, max_pool_layer=nn.MaxPool2D) is MXNet's own pool: NaN is lost."""
    model = DenseNet(TINY, max_pool_layer=gluon.nn.MaxPool2D)
    model.initialize()
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype("float32")
    x[0, 0, 5, 7] = np.nan
    assert isinstance(model.stem.pool, gluon.nn.MaxPool2D)
    assert not isinstance(model.stem.pool, NaNMaxPool2D)
    assert isinstance(DenseNet(TINY).stem.pool, NaNMaxPool2D)
    assert np.isfinite(model(nd.array(x)).asnumpy()).all()


# ---- dtypes


@pytest.mark.parametrize("dtype", ["int32", "float16", np.int64, "bfloat16", "nonsense"])
def test_a_non_float_model_dtype_is_a_dtype_error_before_anything_is_built(dtype, monkeypatch):
    built = []
    monkeypatch.setattr(DenseNet, "initialize", lambda *a, **k: built.append(1))
    with pytest.raises(DTypeError, match="model dtype must be float32 or float64"):
        make_model(TINY, dtype=dtype)
    with pytest.raises(DTypeError, match="model dtype"):
        from_preset("tiny", dtype=dtype)
    assert not built


def _tiny_model(dtype="float32", hybridize=True):
    model = make_model(TINY, dtype=dtype)
    if hybridize:
        model.hybridize()
    return model


@pytest.mark.parametrize("hybridize", [False, True])
def test_bad_inputs_are_named_errors(hybridize):
    model = _tiny_model(hybridize=hybridize)
    x = np.zeros((2, 3, 32, 32), "float32")
    with pytest.raises(DTypeError, match="mxnet NDArray.*numpy.ndarray"):
        model(x)
    with pytest.raises(DTypeError, match="input dtype float64 differs from the model's float32"):
        model(nd.array(x, dtype="float64"))
    with pytest.raises(DTypeError, match="input dtype must be float32 or float64, got int32"):
        model(nd.array(x, dtype="int32"))
    with pytest.raises(DTypeError, match="input dtype"):
        model.stage_outputs(nd.array(x, dtype="int32"))
    with pytest.raises(InputShapeError, match="channels"):
        model(nd.zeros((2, 1, 32, 32)))
    model.cast("int32")  # Gluon's own way to a non-float model: refused at the first call
    with pytest.raises(DTypeError, match="model dtype must be float32 or float64, got int32"):
        model(nd.array(x))


# ---- train_step and gradients validate labels first; a failed call changes nothing


BAD_LABELS = {
    "out of range": (nd.array([7, 1], dtype="int64"), "in 0..4"),
    "negative": (nd.array([-1, 1], dtype="int64"), "in 0..4"),
    "float": (nd.array([1.5, 1]), "integer class indices"),
    "too many": (nd.array([1, 1, 1], dtype="int64"), r"shape \(2,\)"),
    "2-D": (nd.array([[1], [1]], dtype="int64"), r"shape \(2,\)"),
    "numpy": (np.array([1, 1]), "mxnet NDArray"),
}


@pytest.mark.parametrize("variant", ["plain", "fast"])
@pytest.mark.parametrize("kind", sorted(BAD_LABELS))
def test_a_train_step_with_bad_labels_raises_and_changes_nothing(variant, kind):
    model = make_model(TINY, variant, dtype="float64")
    model.hybridize()
    from_canonical(model, init_params(TINY, 0, np.float64, randomize_bn=True))
    trainer = make_optimizer(model, SGDConfig())
    x = nd.array(np.random.default_rng(4).standard_normal((2, 3, 32, 32)), dtype="float64")
    train_step(model, trainer, x, nd.array([0, 1], dtype="int64"))  # momentum is live
    before = to_canonical(model)
    labels, match = BAD_LABELS[kind]
    with pytest.raises(LabelError, match=match):
        train_step(model, trainer, x, labels)
    with pytest.raises(LabelError, match=match):
        gradients(model, x, labels, True)
    for name, value in to_canonical(model).items():  # weights and running statistics
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    train_step(model, trainer, x, nd.array([0, 1], dtype="int64"))  # still trains


def test_a_train_step_with_a_bad_input_changes_nothing():
    model = _tiny_model("float64")
    trainer = make_optimizer(model, SGDConfig())
    before = to_canonical(model)
    y = nd.array([0, 1], dtype="int64")
    for x, error in [
        (nd.zeros((2, 3, 32, 32), dtype="float32"), DTypeError),
        (nd.zeros((1, 3, 7, 7), dtype="float64"), InputShapeError),
        (np.zeros((2, 3, 32, 32)), DTypeError),
    ]:
        with pytest.raises(error):
            train_step(model, trainer, x, y)
    for name, value in to_canonical(model).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


# ---- weights into an uninitialised Gluon model name the canonical parameters


def test_an_uninitialized_model_is_named_with_canonical_names(tmp_path):
    params = init_params(TINY, 0, np.float32)
    model = DenseNet(TINY)
    with pytest.raises(UninitializedModelError, match=r"stem\.conv\.weight.*initialize") as e:
        from_canonical(model, params)
    assert "conv0" not in str(e.value)  # Gluon's internal names stay out of it
    with pytest.raises(UninitializedModelError, match="not initialized"):
        to_canonical(model)
    ready = from_preset("tiny")  # the API's constructors come initialized
    save_weights(ready, tmp_path / "w.safetensors")
    with pytest.raises(UninitializedModelError):
        load(DenseNet(TINY), tmp_path / "w.safetensors")
    load(ready, tmp_path / "w.safetensors")
