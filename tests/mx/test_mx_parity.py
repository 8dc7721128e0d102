"""The MXNet Gluon DenseNet against the NumPy oracle (densenet_spec.reference) and against itself.

float64: every quantity within the tolerance table (semantics). float32: within the bound derived
from the oracle's own float32 rounding on the same case. Plus hybridized == imperative, bit for bit.
Results come from densenet_mx.worker.run_case, the harness's path (hybridized by default).
"""

import dataclasses
import functools

import pytest

mx = pytest.importorskip("mxnet")

import numpy as np  # noqa: E402

from densenet_spec import reference  # noqa: E402
from densenet_spec.case import make_case  # noqa: E402
from densenet_spec.compare import assert_close, rel_errors  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.tolerances import FLOAT32_FLOOR, is_exact_zero  # noqa: E402
from densenet_mx.worker import run_case  # noqa: E402

BIASED_TINY = get_preset("tiny").replace(bn_running_var="biased", bn_momentum=0.3)

# (config, batch, image size, optimizer steps). Two steps exercise the momentum buffer and the
# running statistics carried from one step into the next.
CASES = {
    "tiny": (get_preset("tiny"), 2, 32, 2),
    "tiny_biased_var": (BIASED_TINY, 2, 32, 2),
    "densenet_bc_100": (get_preset("densenet_bc_100"), 2, 8, 2),
    "d2l": (get_preset("d2l"), 2, 64, 2),
    # 64x64 keeps 2x2 pixels in the last block. At 32x32 the last block is 1x1, its train-mode
    # BatchNorms see 2 values per channel and the train quantities become ill-conditioned
    # (MXNet and torch both differ from the oracle by ~1e-9 there), so only eval is checked
    # at 32x32 (test_densenet121_32px_eval_quantities).
    "densenet121": (get_preset("densenet121"), 2, 64, 2),
}


def _case(name, dtype="float64", **changes):
    config, batch, size, steps = CASES[name]
    case = make_case(config, batch=batch, image_size=size, steps=steps, dtype=dtype)
    return dataclasses.replace(case, **changes)


def _as_float64(case):
    """The same numbers in float64: the exact reference for a float32 run on this case."""
    up = functools.partial(np.asarray, dtype=np.float64)
    params = {k: up(v) for k, v in case.params.items()}
    return dataclasses.replace(case, dtype="float64", params=params, x=up(case.x),
                               step_x=up(case.step_x))


@functools.cache
def _oracle(name, dtype="float64"):
    return reference.run_case(_case(name, dtype))[0]


@functools.cache
def _oracle64_of_float32(name):
    return reference.run_case(_as_float64(_case(name, "float32")))[0]


@functools.cache
def _mx(name, dtype="float64", hybridize=True):
    return run_case(_case(name, dtype, options={"hybridize": hybridize}))[0]


@pytest.mark.parametrize("name", list(CASES))
def test_float64_matches_oracle(name):
    assert_close(_mx(name), _oracle(name), "float64")


def test_densenet121_32px_eval_quantities():
    case = make_case(get_preset("densenet121"), batch=2, image_size=32, steps=1,
                     quantities=("eval", "grad"))
    ours, oracle = run_case(case)[0], reference.run_case(case)[0]
    keep = [k for k in oracle if k.startswith(("eval/", "loss/eval", "eval_grad/"))]
    assert_close({k: ours[k] for k in keep}, {k: oracle[k] for k in keep}, "float64")


@pytest.mark.parametrize("name", ["tiny", "d2l"])
def test_float32_matches_oracle_within_derived_bound(name):
    oracle64 = _oracle64_of_float32(name)
    oracle32 = _oracle(name, "float32")
    ours = _mx(name, "float32")
    assert {v.dtype for v in ours.values()} == {np.dtype("float32")}
    # Conv biases after a step: their train-mode gradient is exactly zero (tolerances.py), so
    # what moves them besides weight decay is the gradient's float32 rounding noise, which the
    # oracle's pairwise sums keep ~50x smaller than MXNet's conv kernel (d2l, stem.conv.bias:
    # gradient noise 1.7e-6 vs 2.2e-8; after 2 steps 1.1e-6 vs the step floor 1e-6, torch 6.8e-7).
    # Those keys get the bound the exact-zero rule gives that noise (FLOAT32_FLOOR["train_grad"]
    # of the largest gradient), carried through K momentum steps of size lr.
    noise_moved = [
        k for k in oracle64 if k.startswith("step/") and is_exact_zero(f"train_grad/{k[5:]}")
    ]
    rest = [k for k in oracle64 if k not in noise_moved]
    assert_close({k: ours[k] for k in rest}, {k: oracle64[k] for k in rest}, "float32",
                 float32_errors=rel_errors(oracle32, oracle64))
    case = _case(name, "float32")
    grad_scale = max(
        float(np.abs(v).max()) for k, v in oracle64.items() if k.startswith("train_grad/")
    )
    carried = case.sgd.lr * case.steps / (1 - case.sgd.momentum)
    errors = rel_errors({k: ours[k] for k in noise_moved}, oracle64)
    for k in noise_moved:
        scale = float(np.abs(oracle64[k]).max())
        bound = carried * FLOAT32_FLOOR["train_grad"] * grad_scale / scale
        assert errors[k] <= max(FLOAT32_FLOOR["step"], bound), (k, errors[k], bound)


@pytest.mark.parametrize(
    "name, dtype", [("tiny", "float64"), ("tiny", "float32"), ("d2l", "float32")]
)
def test_hybridized_equals_imperative(name, dtype):
    """One traced graph (forward, backward, steps) gives the op-by-op numbers, bit for bit."""
    hybrid, imperative = _mx(name, dtype, hybridize=True), _mx(name, dtype, hybridize=False)
    assert list(hybrid) == list(imperative)
    for key in hybrid:
        np.testing.assert_array_equal(hybrid[key], imperative[key], err_msg=key)
