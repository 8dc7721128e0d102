"""The torch DenseNet against the NumPy oracle (densenet_spec.reference) and against itself.

float64: every quantity within the tolerance table (semantics). float32: within the bound derived
from the oracle's own float32 rounding on the same case. Both variants (plain, fast), memory-
efficient too. Plus finite differences of the oracle's loss, memory_efficient == plain and
channels_last == plain.
"""

import dataclasses
import functools

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402

from densenet_spec import reference  # noqa: E402
from densenet_spec.case import PARITY_CASES, as_dtype, make_case, parity_case  # noqa: E402
from densenet_spec.compare import assert_close, rel_errors  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.driver import run_case as drive  # noqa: E402
from densenet_torch import DenseNet  # noqa: E402
from densenet_torch.adapter import Adapter  # noqa: E402
from densenet_torch.train import gradients  # noqa: E402
from densenet_torch.weights import from_canonical  # noqa: E402

CASES = PARITY_CASES
VARIANTS = ["plain", "fast"]


def run_case(case):
    return drive(case, Adapter(case))


def _case(name, dtype="float64", **changes):
    return dataclasses.replace(parity_case(name, dtype), **changes)


@functools.cache
def _oracle(name, dtype="float64"):
    case = _case(name, dtype)
    return reference.run_case(case)[0]


@functools.cache
def _oracle64_of_float32(name):
    return reference.run_case(as_dtype(_case(name, "float32"), "float64"))[0]


@functools.cache
def _torch(name, dtype="float64", memory_efficient=False, channels_last=False, variant="plain"):
    case = _case(
        name,
        dtype,
        memory_efficient=memory_efficient,
        variant=variant,
        options={"channels_last": channels_last},
    )
    return run_case(case)[0]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", list(CASES))
def test_float64_matches_oracle(name, variant):
    assert_close(_torch(name, variant=variant), _oracle(name), "float64")


@pytest.mark.parametrize("variant", VARIANTS)
def test_memory_efficient_float64_matches_oracle(variant):
    assert_close(_torch("tiny", memory_efficient=True, variant=variant), _oracle("tiny"), "float64")


@pytest.mark.parametrize("variant", VARIANTS)
def test_densenet121_32px_eval_quantities(variant):
    case = make_case(
        get_preset("densenet121"),
        batch=2,
        image_size=32,
        steps=1,
        quantities=("eval", "grad"),
        variant=variant,
    )
    ours, oracle = run_case(case)[0], reference.run_case(case)[0]
    keep = [k for k in oracle if k.startswith(("eval/", "loss/eval", "eval_grad/"))]
    assert_close({k: ours[k] for k in keep}, {k: oracle[k] for k in keep}, "float64")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ["tiny", "d2l"])
def test_float32_matches_oracle_within_derived_bound(name, variant):
    oracle64 = _oracle64_of_float32(name)
    oracle32 = _oracle(name, "float32")
    ours = _torch(name, "float32", variant=variant)
    assert {v.dtype for v in ours.values()} == {np.dtype("float32")}
    assert_close(ours, oracle64, "float32", float32_errors=rel_errors(oracle32, oracle64))


@pytest.mark.parametrize("name", ["tiny", "tiny_biased_var", "d2l"])
def test_memory_efficient_matches_plain(name):
    """Checkpointed dense layers: same numbers, running statistics updated once per step."""
    plain, efficient = _torch(name), _torch(name, memory_efficient=True)
    assert_close(efficient, plain, "float64")
    for key in plain:
        if "running_" in key:
            np.testing.assert_allclose(efficient[key], plain[key], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["tiny", "d2l"])
def test_channels_last_matches_plain(name):
    assert_close(_torch(name, channels_last=True), _torch(name), "float64")


# Central differences of the oracle's loss, h = 1e-5 in float64: truncation h^2/6 * |f'''|
# (~2e-9 measured at the worst sampled weight) plus rounding eps * |loss| / h (~4e-11). The bound,
# 1e-6 of the tensor's largest gradient (floor 1e-2), is >= 50x above that and still catches any
# wrong term: a missing BN-mean path or a factor error shifts gradients by far more than 1e-6.
FD_STEP = 1e-5
FD_TENSORS = [
    "stem.conv.weight",
    "stem.conv.bias",
    "stem.norm.weight",
    "blocks.0.layers.0.norm1.bias",
    "blocks.0.layers.1.conv1.weight",
    "blocks.1.layers.0.norm2.weight",
    "blocks.1.layers.1.conv2.weight",
    "transitions.0.conv.weight",
    "head.norm.weight",
    "head.fc.weight",
    "head.fc.bias",
]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_gradients_match_finite_differences_of_oracle_loss(training):
    config = get_preset("tiny")
    case = make_case(config, batch=2, image_size=32)
    model = DenseNet(config).to(torch.float64)
    from_canonical(model, case.params)
    _, _, grads = gradients(model, torch.from_numpy(case.x), torch.from_numpy(case.y), training)

    def oracle_loss(params):
        features, _ = reference.forward_features(params, config, case.x, training)
        return float(reference.loss(features["logits"], case.y))

    rng = np.random.default_rng(0)
    for name in FD_TENSORS:
        g = grads[name].numpy()
        bound = 1e-6 * max(float(np.abs(g).max()), 1e-2)
        for _ in range(2):
            idx = tuple(int(rng.integers(0, n)) for n in g.shape)
            params = dict(case.params)
            moved = params[name].copy()
            moved[idx] += FD_STEP
            params[name] = moved
            up = oracle_loss(params)
            moved = moved.copy()
            moved[idx] -= 2 * FD_STEP
            params[name] = moved
            down = oracle_loss(params)
            fd = (up - down) / (2 * FD_STEP)
            assert abs(g[idx] - fd) <= bound, (name, idx, g[idx], fd)


@pytest.mark.parametrize(
    "variant, memory_efficient", [("plain", False), ("fast", False), ("plain", True)]
)
def test_linear_pieces_match_oracle(variant, memory_efficient):
    """With the "pieces" option the adapter reports every BatchNorm's output of its gradient
    passes (the ReLU's input, copied before the in-place ReLU), as the oracle does."""
    case = _case(
        "tiny",
        memory_efficient=memory_efficient,
        variant=variant,
        options={"pieces": True},
        quantities=("grad",),
    )
    ours, oracle = run_case(case)[0], reference.run_case(case)[0]
    pieces = [k for k in oracle if "_piece/" in k]
    assert pieces and {k for k in ours if "_piece/" in k} == set(pieces)
    assert min(float(ours[k].min()) for k in pieces) < 0  # not the ReLU's output
    assert_close(ours, oracle, "float64")
