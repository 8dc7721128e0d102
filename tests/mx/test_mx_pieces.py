"""Issue 24 in MXNet: a "pieces" gradient case reports every BatchNorm's output of the very pass
that computed the gradients (forward hooks on an imperative twin of the model)."""

import dataclasses

import pytest

mx = pytest.importorskip("mxnet")

import numpy as np  # noqa: E402
from mxnet import autograd, nd  # noqa: E402

from densenet_mx.adapter import Adapter  # noqa: E402
from densenet_spec import driver, reference  # noqa: E402
from densenet_spec.case import make_case, relu_names  # noqa: E402
from densenet_spec.compare import rel_errors  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.params import param_specs  # noqa: E402


def _case(dtype="float32", variant="plain", hybridize=True, **options):
    return make_case(
        get_preset("tiny"),
        image_size=32,
        dtype=dtype,
        quantities=("grad",),
        variant=variant,
        options={"pieces": True, "hybridize": hybridize, **options},
    )


def _bn_alone(norm, x: nd.NDArray, training: bool) -> np.ndarray:
    """The BatchNorm block run on its own (its running statistics restored afterwards)."""
    saved = [norm.running_mean.data().copy(), norm.running_var.data().copy()]
    with autograd.record(train_mode=training):
        y = norm(x)
    norm.running_mean.set_data(saved[0])
    norm.running_var.set_data(saved[1])
    return y.asnumpy()


@pytest.mark.parametrize("training", [False, True])
def test_keys_are_the_batch_norm_names_and_values_are_each_norms_output(training):
    case = _case("float64")
    adapter = Adapter(case)
    x, y = adapter.images(case.x), adapter.labels(case.y)
    grads = adapter.gradients(adapter.build(), x, y, training)
    pre = grads.preactivations
    bn_names = [
        s.name[: -len(".weight")] for s in param_specs(case.config) if s.kind == "bn_weight"
    ]
    assert list(pre) == bn_names == relu_names(case.config)
    twin, _ = adapter._recording_twin()
    # stem.norm: its input is the stem conv's output of that pass, recomputed from x
    conv = twin.stem.conv(x)
    np.testing.assert_array_equal(
        pre["stem.norm"].asnumpy(), _bn_alone(twin.stem.norm, conv, training)
    )
    # the first layer's norm1 reads the stem's output (the max-pool of ReLU(stem.norm))
    pooled = twin.stem.pool(nd.relu(pre["stem.norm"]))
    layer = twin.blocks[0].layers[0]
    np.testing.assert_array_equal(
        pre["blocks.0.layers.0.norm1"].asnumpy(), _bn_alone(layer.norm1, pooled, training)
    )
    # and norm2 reads conv1(ReLU(norm1)) of the same pass
    mid = layer.conv1(nd.relu(pre["blocks.0.layers.0.norm1"]))
    np.testing.assert_array_equal(
        pre["blocks.0.layers.0.norm2"].asnumpy(), _bn_alone(layer.norm2, mid, training)
    )


@pytest.mark.parametrize("variant", ["plain", "fast"])
def test_the_recorded_pass_gives_the_hybridized_models_gradients_bit_for_bit(variant):
    """The gradients of the recording (imperative) pass equal the hybridized model's."""
    case = _case(variant=variant)
    recorded = driver.run_case(case, Adapter(case))[0]
    hybridized = dataclasses.replace(case, options={"hybridize": True})  # no pieces
    plain = driver.run_case(hybridized, Adapter(hybridized))[0]
    for key, value in plain.items():
        np.testing.assert_array_equal(recorded[key], value, err_msg=key)
    assert {k.split("/")[0] for k in recorded} == {
        "eval_grad",
        "train_grad",
        "eval_piece",
        "train_piece",
    }


def test_the_recorded_pieces_match_the_oracles_relu_inputs():
    """float64: each recorded BN output is the oracle's ReLU input of that mode (semantics)."""
    case = _case("float64")
    results, info = driver.run_case(case, Adapter(case))
    assert "forward hooks" in info["pieces_recording"] and "pieces" not in info
    for mode, training in (("eval", False), ("train", True)):
        want = reference.relu_inputs(case.params, case.config, case.x, training)
        got = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith(f"{mode}_piece/")}
        assert list(got) == list(want)
        assert max(rel_errors(got, want).values()) < 1e-12
