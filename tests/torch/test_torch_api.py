"""Issue 23 in torch: the small API every densenet_* package shares (contracts.ApiContract: the
five-line quick start against the oracle, files, first contact) and what is torch's alone."""

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
from contracts import ApiContract  # noqa: E402

from densenet_spec.errors import DTypeError  # noqa: E402
from densenet_torch import from_nchw, from_preset, predict  # noqa: E402


class TestApi(ApiContract):
    package, layout = "densenet_torch", "NCHW"

    def param_dtype(self, model) -> str:
        return str(model.head.fc.weight.dtype).removeprefix("torch.")


@pytest.mark.parametrize("variant", ["plain", "fast"])
def test_predict_is_eval_mode_and_leaves_the_modes_as_it_found_them(variant):
    model = from_preset("tiny", variant=variant, dtype="float64")
    x = from_nchw(np.random.default_rng(3).standard_normal((2, 3, 32, 32)))
    with torch.no_grad():
        want = model.eval()(x)
    model.train()
    model.head.norm.eval()  # a mixed state (e.g. frozen BatchNorm) comes back as it was
    before = model.head.norm.running_mean.clone(), model.stem.norm.running_mean.clone()
    got = predict(model, x)
    assert not got.requires_grad
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert model.training and model.stem.norm.training and not model.head.norm.training
    assert torch.equal(model.head.norm.running_mean, before[0])
    assert torch.equal(model.stem.norm.running_mean, before[1])
    with pytest.raises(DTypeError, match=r"torch\.Tensor"):
        predict(model, x.numpy())


def test_from_nchw_keeps_dtype_and_layout():
    x = np.arange(24, dtype=np.float64).reshape(1, 2, 3, 4)
    t = from_nchw(x)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.shape == x.shape
    np.testing.assert_array_equal(t.numpy(), x)
    x[0, 0, 0, 0] = 99  # a copy: the caller's array stays theirs
    assert t[0, 0, 0, 0] == 0
