"""The error measure and the bound table: the rules every parity verdict rests on."""

import numpy as np
import pytest

from densenet_spec.compare import DerivedErrors, assert_close, bounds_for, compare, rel_errors
from densenet_spec.tolerances import (
    FLOAT32_FLOOR,
    FLOAT32_SAFETY,
    FLOAT32_SCALE_FLOOR,
    FLOAT64,
    GRAD_FLOOR,
)


def test_relative_max_error_is_against_the_reference():
    a, b = {"eval/stem": np.array([1.0, 2.0])}, {"eval/stem": np.array([1.0, 4.0])}
    assert rel_errors(a, b)["eval/stem"] == pytest.approx(2.0 / 4.0)
    assert rel_errors(b, a)["eval/stem"] == pytest.approx(2.0 / 2.0)
    assert rel_errors(b, a, symmetric=True)["eval/stem"] == pytest.approx(2.0 / 4.0)


def test_exact_zero_conv_bias_gradients_use_the_family_scale():
    ref = {
        "train_grad/blocks.0.layers.0.conv.bias": np.array([1e-18]),
        "train_grad/head.fc.weight": np.array([0.5]),
    }
    got = {
        "train_grad/blocks.0.layers.0.conv.bias": np.array([-3e-18]),
        "train_grad/head.fc.weight": np.array([0.5]),
    }
    err = rel_errors(got, ref)
    assert err["train_grad/blocks.0.layers.0.conv.bias"] == pytest.approx(4e-18 / 0.5)


def test_small_gradients_are_floored_but_large_ones_are_not():
    ref = {
        "train_grad/stem.norm.bias": np.array([1e-9]),
        "train_grad/head.fc.weight": np.array([1.0]),
    }
    got = {
        "train_grad/stem.norm.bias": np.array([2e-9]),
        "train_grad/head.fc.weight": np.array([1.0 + 1e-8]),
    }
    err = rel_errors(got, ref)
    assert err["train_grad/stem.norm.bias"] == pytest.approx(1e-9 / GRAD_FLOOR)
    assert err["train_grad/head.fc.weight"] == pytest.approx(1e-8)
    # features are never floored: a tiny stage output is held to its own scale
    assert (
        rel_errors({"eval/stem": np.array([2e-9])}, {"eval/stem": np.array([1e-9])})["eval/stem"]
        == 1.0
    )


def test_shape_mismatch_and_missing_keys_fail():
    ref = {"eval/logits": np.zeros((2, 3)) + 1, "eval/head": np.ones((2, 4))}
    comps = {c.key: c for c in compare({"eval/logits": np.ones((3, 2))}, ref, "float64")}
    assert not comps["eval/logits"].ok and not comps["eval/head"].ok
    with pytest.raises(AssertionError, match="eval/head"):
        assert_close({"eval/logits": np.ones((2, 3))}, ref, "float64")


def test_bounds_float64_table_and_float32_derivation():
    keys = ["eval/stem", "train_grad/head.fc.weight", "step/head.fc.bias"]
    assert bounds_for(keys, "float64") == {k: FLOAT64[k.split("/")[0]] for k in keys}
    derived = bounds_for(keys, "float32", {"eval/stem": 1e-9, "train_grad/head.fc.weight": 1e-3})
    assert derived["eval/stem"] == FLOAT32_FLOOR["eval"]  # floor wins over 16 x 1e-9
    assert derived["train_grad/head.fc.weight"] == pytest.approx(FLOAT32_SAFETY * 1e-3)
    with pytest.raises(ValueError, match="derived"):
        bounds_for(keys, "float32")


def test_float32_step_allowance_only_for_exact_zero_gradients():
    from densenet_spec.case import SGDConfig, make_case
    from densenet_spec.compare import float32_step_allowance
    from densenet_spec.config import get_preset

    case = make_case(
        get_preset("tiny"),
        dtype="float32",
        image_size=16,
        steps=2,
        sgd=SGDConfig(lr=0.1, momentum=0.5, weight_decay=0.0),
    )
    ref = {
        "train_grad/stem.conv.bias": np.array([0.0, 0.0]),
        "train_grad/head.fc.weight": np.array([2.0, -1.0]),
        "step/stem.conv.bias": np.array([0.5, -0.25]),
    }
    allow = float32_step_allowance(case, ref, {})
    assert set(allow) == {"step/stem.conv.bias"}
    # lr * ((1 - m) + (1 - m^2)) / (1 - m) = 0.1 * (1 + 1.5); gradient noise bound 1e-4 x max 2.0
    assert allow["step/stem.conv.bias"] == pytest.approx(
        0.1 * 2.5 * FLOAT32_FLOOR["train_grad"] * 2.0 / 0.5
    )


@pytest.mark.parametrize("steps", [1, 5])
def test_float32_multi_step_bounds_cover_another_summation_order(steps):
    """Issue 17: a float32 implementation that sums in another order (the oracle on the batch
    permuted: the same mathematics, other rounding) passes the harness's float32 bounds after K
    steps (bounds grow with K: the oracle's own K-step float32 error and the carried gradient
    noise), and a failure only in step/ keys names the tensor."""
    import dataclasses

    from densenet_spec import reference
    from densenet_spec.case import make_case, result_keys
    from densenet_spec.compare import compare, float32_step_allowance
    from densenet_spec.config import get_preset
    from densenet_spec.harness import ORACLE, PairReport, oracle_results, with_pieces

    case = with_pieces(
        make_case(
            get_preset("tiny"),
            batch=8,
            image_size=32,
            steps=steps,
            dtype="float32",
            quantities=("grad", "step"),
        )
    )
    oracle = oracle_results(case)
    e32 = oracle.float32_errors
    truth = {k: oracle.truth[k] for k in result_keys(case)}
    allowance = float32_step_allowance(case, truth, e32)
    perm = np.random.default_rng(7).permutation(8)
    other = dataclasses.replace(
        case,
        x=case.x[perm],
        y=case.y[perm],
        step_x=case.step_x[:, perm],
        step_y=case.step_y[:, perm],
    )
    results, _ = reference.run_case(other)
    back = np.argsort(perm)  # batch-indexed results (input gradients, pieces) in case.x's order
    results = {k: v[back] if "/input" in k or "_piece/" in k else v for k, v in results.items()}
    truth = oracle.on_piece(results)  # gradients on the permuted run's own linear pieces
    comps = compare(results, truth, "float32", e32, allowance=allowance)
    assert all(c.ok for c in comps), [c for c in comps if not c.ok][:5]
    bias = next(c for c in comps if c.key == "step/stem.conv.bias")
    assert bias.bound > 10 * bias.error  # the conv-bias rule keeps a margin at every K
    broken = {**results, "step/stem.conv.bias": results["step/stem.conv.bias"] + 1.0}
    pair = PairReport("fake", ORACLE, compare(broken, truth, "float32", e32, allowance=allowance))
    assert pair.first_divergence() == {"step": "stem.conv.bias"}


def test_float32_step_allowance_grows_with_the_steps():
    from densenet_spec.case import make_case
    from densenet_spec.compare import float32_step_allowance
    from densenet_spec.config import get_preset

    ref = {
        "train_grad/stem.conv.bias": np.zeros(2),
        "train_grad/head.fc.weight": np.ones(2),
        "step/stem.conv.bias": np.ones(2),
    }
    allow = [
        float32_step_allowance(make_case(get_preset("tiny"), dtype="float32", steps=k), ref, {})
        for k in (1, 2, 5, 20)
    ]
    values = [a["step/stem.conv.bias"] for a in allow]
    assert values == sorted(values) and values[-1] > 10 * values[0]


def test_float32_gradients_are_measured_in_the_units_their_bounds_were_derived_in():
    """A cancelling gradient (value 1e-3, rounding scale 10) errs by 1e-6: 1e-3 of its value,
    1e-7 of its scale. Its bound comes with the scale (DerivedErrors), so both sides are in the
    same unit; float64 keeps the plain relative measure."""
    ref = {"train_grad/stem.norm.weight": np.array([1e-3, -1e-3]), "train/logits": np.ones(2)}
    got = {"train_grad/stem.norm.weight": ref["train_grad/stem.norm.weight"] + 1e-6}
    got["train/logits"] = np.ones(2)
    e32 = DerivedErrors({"train_grad/stem.norm.weight": 1e-7, "train/logits": 0.0},
                        {"train_grad/stem.norm.weight": 10.0})  # fmt: skip
    (c, logits) = compare(got, ref, "float32", e32)
    assert c.error == pytest.approx(1e-7) and c.bound == FLOAT32_SAFETY * 1e-7 and c.ok
    assert logits.bound == FLOAT32_FLOOR["train"]  # not a gradient: its own floor
    # the floor of a scaled key is FLOAT32_SAFETY roundings of the scale, not the value's 1e-4
    assert bounds_for(["train_grad/stem.norm.weight"], "float32", DerivedErrors(
        {"train_grad/stem.norm.weight": 0.0}, {"train_grad/stem.norm.weight": 10.0}
    ))["train_grad/stem.norm.weight"] == FLOAT32_SCALE_FLOOR  # fmt: skip
    # negative controls: 100x the error fails; the plain measure (no scales) sees 1e-3
    worse = {**got, "train_grad/stem.norm.weight": ref["train_grad/stem.norm.weight"] + 1e-4}
    assert not compare(worse, ref, "float32", e32)[0].ok
    plain = compare(got, ref, "float32", dict(e32))[0]
    assert plain.error == pytest.approx(1e-3) and not plain.ok
    assert compare(got, ref, "float64", e32)[0].error == pytest.approx(1e-3)
