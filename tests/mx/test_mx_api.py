"""Issue 23 in MXNet: the small API every densenet_* package shares (contracts.ApiContract: the
five-line quick start against the oracle, files, first contact) and what is MXNet's alone."""

import pytest

mx = pytest.importorskip("mxnet")

import numpy as np  # noqa: E402
from contracts import ApiContract  # noqa: E402
from mxnet import autograd, nd  # noqa: E402

from densenet_mx import from_nchw, from_preset, predict  # noqa: E402
from densenet_spec.errors import DTypeError  # noqa: E402


class TestApi(ApiContract):
    package, layout = "densenet_mx", "NCHW"

    def param_dtype(self, model) -> str:
        return str(np.dtype(model.head.fc.weight.dtype))


def test_predict_is_eval_mode_and_leaves_autograd_as_it_found_it():
    model = from_preset("tiny", dtype="float64")
    x = from_nchw(np.random.default_rng(3).standard_normal((2, 3, 32, 32)))
    with autograd.predict_mode():
        want = model(x).asnumpy()
    before = model.head.norm.running_mean.data().asnumpy()
    with autograd.record(train_mode=True):
        got = predict(model, x)
        assert autograd.is_recording() and autograd.is_training()
    assert not autograd.is_recording() and not autograd.is_training()
    np.testing.assert_array_equal(got.asnumpy(), want)
    np.testing.assert_array_equal(model.head.norm.running_mean.data().asnumpy(), before)
    with pytest.raises(DTypeError, match="NDArray"):
        predict(model, x.asnumpy())


def test_from_nchw_keeps_dtype_and_layout():
    x = np.arange(24, dtype=np.float64).reshape(1, 2, 3, 4)
    t = from_nchw(x)
    assert isinstance(t, nd.NDArray) and t.dtype == np.float64 and t.shape == x.shape
    np.testing.assert_array_equal(t.asnumpy(), x)
