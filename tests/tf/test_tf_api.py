"""Issue 23 in TensorFlow: the small API every densenet_* package shares (contracts.ApiContract:
the five-line quick start against the oracle, files, first contact) and what is TF's alone."""

import pytest

tf = pytest.importorskip("tensorflow")

import numpy as np  # noqa: E402
from contracts import ApiContract  # noqa: E402

from densenet_spec.errors import DTypeError, InputShapeError  # noqa: E402
from densenet_tf import from_nchw, from_preset, predict  # noqa: E402


class TestApi(ApiContract):
    package, layout = "densenet_tf", "NHWC"
    first_call_imports = "import tensorflow"
    first_call_limits = {"from_preset": 10, "load": 10, "first_predict": 20}  # XLA compile

    def param_dtype(self, model) -> str:
        return model.dtype_policy.variable_dtype


def test_predict_is_eval_mode_and_changes_no_statistic():
    """Keras models keep no train/eval state (each call takes `training`): predict is the
    eval-mode forward, compiled, and leaves the running statistics alone."""
    model = from_preset("tiny", dtype="float64")
    x = from_nchw(np.random.default_rng(3).standard_normal((2, 3, 32, 32)))
    want = model(x, training=False).numpy()
    before = model.head.get_layer("norm").moving_mean.numpy()
    got = predict(model, x)
    np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(model.head.get_layer("norm").moving_mean.numpy(), before)
    np.testing.assert_array_equal(predict(model, x.numpy()).numpy(), want)  # NumPy is fine
    with pytest.raises(DTypeError, match="input dtype"):
        predict(model, tf.cast(x, tf.int32))


def test_from_nchw_keeps_dtype_and_moves_channels_last():
    x = np.arange(24, dtype=np.float64).reshape(1, 2, 3, 4)
    t = from_nchw(x)
    assert isinstance(t, tf.Tensor) and t.dtype == tf.float64 and t.shape == (1, 3, 4, 2)
    np.testing.assert_array_equal(t.numpy(), x.transpose(0, 2, 3, 1))
    with pytest.raises(InputShapeError, match="rank 4"):
        from_nchw(x[0])
