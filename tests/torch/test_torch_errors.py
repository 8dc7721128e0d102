"""Issue 17 in torch: every bad input a named error, nothing changed by a failed call, and NaN
propagating through the max-pool as the oracle's does (both variants)."""

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
from densenet_testing import (  # noqa: E402
    NAN_WINDOWS,
    check_nan_logits,
    max_pool_reference,
    nan_images,
    nan_pool_input,
)

from densenet_spec.case import SGDConfig  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.errors import DTypeError, InputShapeError, LabelError  # noqa: E402
from densenet_spec.params import init_params  # noqa: E402
from densenet_torch import DenseNet, from_file, from_preset, make_model  # noqa: E402
from densenet_torch.train import gradients, make_optimizer, train_step  # noqa: E402
from densenet_torch.weights import from_canonical, to_canonical  # noqa: E402

TINY = get_preset("tiny")  # ImageNet stem: conv 7x7/2, BN, ReLU, max-pool 3x3/2


# ---- NaN propagates through the stem's max-pool (torch's own pool does: nothing injected)


@pytest.mark.parametrize("variant", ["plain", "fast"])
@pytest.mark.parametrize("where", ["one pixel", "all"])
def test_an_image_with_nan_gives_nan_logits_like_the_oracle(variant, where):
    params, x = nan_images(where)
    model = make_model(TINY, variant, dtype="float64")
    from_canonical(model, params)
    for training in (False, True):
        model.train(training)
        with torch.no_grad():
            got = model(torch.from_numpy(x)).numpy()
        check_nan_logits(got, params, x, training)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_torchs_max_pool_gives_nan_exactly_in_windows_holding_one(memory_format):
    x = nan_pool_input()
    pool = torch.nn.MaxPool2d(3, stride=2, padding=1)
    got = pool(torch.from_numpy(x).contiguous(memory_format=memory_format)).numpy()
    np.testing.assert_array_equal(got, max_pool_reference(x))
    assert np.isnan(got).sum() == NAN_WINDOWS


# ---- dtypes


@pytest.mark.parametrize(
    "dtype", ["int32", "float16", np.int64, torch.int32, torch.bfloat16, "nonsense"]
)
def test_a_non_float_model_dtype_is_a_dtype_error_before_anything_is_built(dtype, monkeypatch):
    built = []
    monkeypatch.setattr(DenseNet, "__init__", lambda *a, **k: built.append(1))
    with pytest.raises(DTypeError, match="model dtype must be float32 or float64"):
        make_model(TINY, dtype=dtype)
    with pytest.raises(DTypeError, match="model dtype"):
        from_preset("tiny", dtype=dtype)
    with pytest.raises(DTypeError, match="model dtype"):
        from_file("/nonexistent.safetensors", dtype=dtype)  # before the file is read
    assert not built


def test_float_dtypes_by_name_and_by_torch_dtype():
    for dtype in ("float64", torch.float64, np.float64):
        assert next(make_model(TINY, dtype=dtype).parameters()).dtype == torch.float64
    assert next(make_model(TINY).parameters()).dtype == torch.float32  # torch's default


def test_bad_inputs_are_named_errors():
    model = make_model(TINY).eval()
    x = np.zeros((2, 3, 32, 32), "float32")
    with pytest.raises(DTypeError, match=r"torch\.Tensor.*numpy\.ndarray"):
        model(x)
    with pytest.raises(DTypeError, match="input dtype float64 differs from the model's float32"):
        model(torch.zeros(2, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(DTypeError, match="input dtype must be float32 or float64, got int32"):
        model(torch.zeros(2, 3, 32, 32, dtype=torch.int32))
    with pytest.raises(DTypeError, match="input dtype"):
        model.stage_outputs(torch.zeros(2, 3, 32, 32, dtype=torch.int32))
    with pytest.raises(InputShapeError, match="channels"):
        model(torch.zeros(2, 1, 32, 32))
    model.half()  # torch's own way to a non-float32/64 model: refused at the first call
    with pytest.raises(DTypeError, match="model dtype must be float32 or float64, got float16"):
        model(torch.zeros(2, 3, 32, 32, dtype=torch.float16))


# ---- train_step and gradients validate labels first; a failed call changes nothing


BAD_LABELS = {
    "out of range": (torch.tensor([7, 1]), "in 0..4"),
    "negative": (torch.tensor([-1, 1]), "in 0..4"),
    "float": (torch.tensor([1.5, 1.0]), "integer class indices"),
    "bool": (torch.tensor([True, False]), "integer class indices"),
    "too many": (torch.tensor([1, 1, 1]), r"shape \(2,\)"),
    "2-D": (torch.tensor([[1], [1]]), r"shape \(2,\)"),
    "numpy": (np.array([1, 1]), r"torch\.Tensor"),
}


@pytest.mark.parametrize("variant", ["plain", "fast"])
@pytest.mark.parametrize("kind", sorted(BAD_LABELS))
def test_a_train_step_with_bad_labels_raises_and_changes_nothing(variant, kind):
    model = make_model(TINY, variant, dtype="float64")
    from_canonical(model, init_params(TINY, 0, np.float64, randomize_bn=True))
    optimizer = make_optimizer(model, SGDConfig())
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((2, 3, 32, 32)))
    train_step(model, optimizer, x, torch.tensor([0, 1]))  # momentum is live
    before = to_canonical(model)
    counters = [m.num_batches_tracked.item() for m in model.modules() if hasattr(m, "eps")]
    labels, match = BAD_LABELS[kind]
    with pytest.raises(LabelError, match=match):
        train_step(model, optimizer, x, labels)
    with pytest.raises(LabelError, match=match):
        gradients(model, x, labels, True)
    for name, value in to_canonical(model).items():  # weights and running statistics
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    assert [m.num_batches_tracked.item() for m in model.modules() if hasattr(m, "eps")] == counters
    train_step(model, optimizer, x, torch.tensor([0, 1]))  # still trains


def test_integer_labels_of_any_width_train():
    """int32 / uint8 labels pass check_labels in every framework; torch's kernel wants int64,
    so loss_fn converts (same loss)."""
    model = make_model(TINY, dtype="float64")
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((2, 3, 32, 32)))
    losses = [
        gradients(model, x, torch.tensor([3, 1], dtype=dtype), False)[0]
        for dtype in (torch.int64, torch.int32, torch.uint8)
    ]
    assert losses[0] == losses[1] == losses[2]


def test_a_train_step_with_a_bad_input_changes_nothing():
    model = make_model(TINY, dtype="float64")
    optimizer = make_optimizer(model, SGDConfig())
    before = to_canonical(model)
    y = torch.tensor([0, 1])
    for x, error in [
        (torch.zeros(2, 3, 32, 32, dtype=torch.float32), DTypeError),
        (torch.zeros(1, 3, 7, 7, dtype=torch.float64), InputShapeError),
        (np.zeros((2, 3, 32, 32)), DTypeError),
    ]:
        with pytest.raises(error):
            train_step(model, optimizer, x, y)
    for name, value in to_canonical(model).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
