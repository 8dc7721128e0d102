"""Issue 23 in JAX: the small API every densenet_* package shares (contracts.ApiContract: the
five-line quick start against the oracle, files, first contact) and what is JAX's alone."""

import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from contracts import ApiContract  # noqa: E402
from flax import nnx  # noqa: E402

from densenet_jax import from_nchw, from_preset, predict  # noqa: E402
from densenet_spec.errors import DTypeError  # noqa: E402


class TestApi(ApiContract):
    package, layout = "densenet_jax", "NHWC"
    other_init = {"seed": 1}  # initialisation is seeded: seed 0 twice gives the same weights
    first_call_limits = {"from_preset": 5, "load": 5, "first_predict": 10}  # was 10 s and 7 s

    def param_dtype(self, model) -> str:
        return str(model.head.fc.kernel.dtype)


def test_from_preset_with_rngs_uses_nnx_initialisers():
    model = from_preset("tiny", rngs=nnx.Rngs(0))
    x = from_nchw(np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype("float32"))
    assert predict(model, x).shape == (2, 5)


@pytest.mark.parametrize("variant", ["plain", "fast"])
def test_predict_is_eval_mode_and_leaves_the_modes_as_it_found_them(variant):
    model = from_preset("tiny", variant=variant, dtype="float64")
    x = from_nchw(np.random.default_rng(3).standard_normal((2, 3, 32, 32)))
    model.eval()
    want = model(x)
    model.train()
    model.head.norm.use_running_average = True  # a mixed state (a frozen BatchNorm) stays
    before = np.asarray(model.head.norm.mean[...]), np.asarray(model.stem.norm.mean[...])
    got = predict(model, x)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert not model.use_running_average and not model.stem.norm.use_running_average
    assert model.head.norm.use_running_average
    np.testing.assert_array_equal(model.head.norm.mean[...], before[0])
    np.testing.assert_array_equal(model.stem.norm.mean[...], before[1])
    with pytest.raises(DTypeError, match="input dtype float32 differs"):
        predict(model, x.astype(jnp.float32))
    with pytest.raises(DTypeError, match=r"jax\.Array or NumPy"):
        predict(model, [[1.0]])


def test_from_nchw_keeps_dtype_and_moves_channels_last():
    x = np.arange(24, dtype=np.float64).reshape(1, 2, 3, 4)
    t = from_nchw(x)
    assert isinstance(t, jax.Array) and t.dtype == jnp.float64 and t.shape == (1, 3, 4, 2)
    np.testing.assert_array_equal(np.asarray(t), x.transpose(0, 2, 3, 1))
    x[0, 0, 0, 0] = 99  # a copy: the caller's array stays theirs
    assert t[0, 0, 0, 0] == 0
