"""densenet_torch.variants.make_model: the plain and the fast model, memory-efficient or not."""

import pytest

torch = pytest.importorskip("torch")

from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.errors import UnknownVariantError  # noqa: E402
from densenet_spec.params import init_params  # noqa: E402
from densenet_torch import DenseNet, make_model  # noqa: E402
from densenet_torch.layers import DenseBlock  # noqa: E402
from densenet_torch.memory_efficient import MemoryEfficientDenseBlock  # noqa: E402
from densenet_torch.weights import from_canonical  # noqa: E402

CONFIG = get_preset("tiny")


def _conv_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_plain_is_the_teaching_model():
    model = make_model(CONFIG)
    assert type(model) is DenseNet
    assert all(type(b) is DenseBlock for b in model.blocks)
    assert all(w.is_contiguous() for w in _conv_weights(model))


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_fast_is_channels_last_with_the_same_modules(memory_efficient):
    model = make_model(CONFIG, "fast", memory_efficient)
    block = MemoryEfficientDenseBlock if memory_efficient else DenseBlock
    assert all(type(b) is block for b in model.blocks)
    weights = _conv_weights(model)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert list(model.state_dict()) == list(DenseNet(CONFIG).state_dict())


def test_device_and_dtype():
    model = make_model(CONFIG, "fast", device="cpu", dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_fast_answers_a_contiguous_input_in_channels_last_with_the_plain_numbers():
    params = init_params(CONFIG, seed=0, dtype="float64", randomize_bn=True)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    outputs = {}
    for variant in ("plain", "fast"):
        model = make_model(CONFIG, variant, dtype=torch.float64).eval()
        from_canonical(model, params)
        with torch.no_grad():
            outputs[variant] = model.stage_outputs(x)
    assert outputs["fast"]["stem"].is_contiguous(memory_format=torch.channels_last)
    assert not outputs["plain"]["stem"].is_contiguous(memory_format=torch.channels_last)
    for k, v in outputs["plain"].items():
        torch.testing.assert_close(outputs["fast"][k], v, rtol=1e-12, atol=1e-12)


def test_unknown_variant_raises_named_error():
    with pytest.raises(UnknownVariantError, match="unknown variant 'turbo'; known: plain, fast"):
        make_model(CONFIG, "turbo")
