"""The float32 ReLU-kink fallback (kinks.py): gradients with near-kink ReLU masks flipped, for a
framework that cannot report its linear piece (tolerances.py)."""

import numpy as np
import pytest

from densenet_spec import reference
from densenet_spec.case import SGDConfig, make_case
from densenet_spec.compare import _carried, _denominator, family_scales
from densenet_spec.config import get_preset
from densenet_spec.kinks import float32_kink_allowance, kink_thresholds
from densenet_spec.tolerances import FLOAT32_SAFETY


@pytest.fixture(scope="module")
def tiny():
    case = make_case(
        get_preset("tiny"),
        dtype="float32",
        image_size=16,
        steps=1,
        sgd=SGDConfig(lr=0.1, momentum=0.9, weight_decay=0.0),
    )
    p64 = {k: v.astype(np.float64) for k, v in case.params.items()}
    x64 = case.x.astype(np.float64)
    _, _, truth = reference.gradients(p64, case.config, x64, case.y, True)
    return case, p64, x64, truth


def _one_near_kink_entry(y: np.ndarray) -> float:
    """A threshold that makes exactly the smallest |y| of this ReLU input near-kink."""
    a = np.sort(np.abs(y).ravel())
    assert a[0] < a[1]
    return float((a[0] + a[1]) / 2)


def test_flipping_one_near_kink_entry_is_exactly_the_allowance(tiny):
    case, p64, x64, truth = tiny
    ys = reference.relu_inputs(p64, case.config, x64)
    name = "blocks.1.layers.0.norm1"
    thresholds = {name: _one_near_kink_entry(ys[name])}
    variants = [
        reference.gradients(
            p64, case.config, x64, case.y, True, kink_threshold=thresholds, kink_derivative=d
        )[2]
        for d in (1, 0)
    ]
    # the entry's own mask is one of the two: that variant is the truth bit for bit
    same = [all(np.array_equal(v[n], truth[n]) for n in truth) for v in variants]
    assert sorted(same) == [False, True]
    flipped = variants[same.index(False)]
    changed = {n for n in truth if not np.array_equal(flipped[n], truth[n])}
    # backward reaches the head and the later layers before this ReLU: untouched
    assert "head.fc.weight" not in changed and "head.norm.weight" not in changed
    assert "blocks.1.layers.1.conv2.weight" not in changed
    # the BatchNorm feeding the ReLU and everything before it change
    assert {f"{name}.weight", f"{name}.bias", "stem.conv.weight"} <= changed

    ref = {f"train_grad/{n}": g for n, g in truth.items()}
    allow = float32_kink_allowance(case, ref, thresholds)
    scales = family_scales(ref)
    for n in truth:
        key = f"train_grad/{n}"
        diff = float(np.max(np.abs(flipped[n] - truth[n])))
        if n in changed:
            assert allow[key] == diff / _denominator(key, truth[n], scales)
            step = _carried(case) * diff / float(np.max(np.abs(case.params[n])))
            assert allow[f"step/{n}"] == pytest.approx(step, rel=1e-12)
        else:
            assert key not in allow and f"step/{n}" not in allow
    assert allow[f"train_grad/{name}.bias"] > 0


def test_no_near_kink_entries_no_allowance(tiny):
    case, p64, x64, truth = tiny
    ref = {f"train_grad/{n}": g for n, g in truth.items()}
    names = reference.relu_inputs(p64, case.config, x64)
    assert float32_kink_allowance(case, ref, {n: 0.0 for n in names}) == {}
    assert float32_kink_allowance(case, ref, {}) == {}
    assert float32_kink_allowance(case, {"eval/stem": np.zeros(1)}) == {}  # no gradients compared


def test_thresholds_are_the_oracles_own_float32_error(tiny):
    case, p64, x64, _ = tiny
    y64 = reference.relu_inputs(p64, case.config, x64)
    y32 = reference.relu_inputs(case.params, case.config, case.x)
    t = kink_thresholds(case)
    assert set(t) == set(y64) and "stem.norm" in t and "head.norm" in t
    for n in t:
        assert y32[n].dtype == np.float32
        assert t[n] == FLOAT32_SAFETY * float(np.max(np.abs(y32[n].astype(np.float64) - y64[n])))
        assert 0 < t[n] < 1e-3


def test_float64_unchanged_without_thresholds(tiny):
    case, p64, x64, truth = tiny
    names = reference.relu_inputs(p64, case.config, x64)
    for d in (1, 0):
        _, _, g = reference.gradients(
            p64,
            case.config,
            x64,
            case.y,
            True,
            kink_threshold={n: 0.0 for n in names},
            kink_derivative=d,
        )
        assert all(np.array_equal(g[n], truth[n]) for n in truth)
    from densenet_spec.case import as_dtype
    from densenet_spec.harness import oracle_results

    oracle = oracle_results(as_dtype(case, "float64"))
    assert oracle.float32_errors is None and oracle.pieces is None
    assert all(np.array_equal(oracle.truth[f"train_grad/{n}"], g) for n, g in truth.items())
