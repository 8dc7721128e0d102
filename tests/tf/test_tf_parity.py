"""The TF adapter, run by the one driver, against the NumPy oracle: every stage, loss, gradient
and SGD step, for the plain and the fast variant (on a CPU-only machine fast is the plain model
under the same settings; variants.make_model).

float64: semantics, bound 1e-10 (1e-9 for gradients and steps) from densenet_spec.tolerances.
float32: the bound derived from the oracle's own float32 error on the same case.
"""

import os

os.environ["KERAS_BACKEND"] = "tensorflow"

import pytest  # noqa: E402

pytest.importorskip("tensorflow")

from densenet_spec.compare import assert_close, rel_errors  # noqa: E402
from densenet_spec.driver import run_case  # noqa: E402
from densenet_tf.adapter import Adapter  # noqa: E402

# (preset, image size, steps). Batch 2 throughout. Two SGD steps where the model is small, so
# the momentum buffer is exercised; one for the large ones. DenseNet-121 runs at 64x64: at
# 32x32 its last block is 1x1, so each train-mode BatchNorm there sees 2 values per channel and
# train-mode results are ill-conditioned (torch and TF both differ from the oracle by ~1e-8
# there; float64 rounding, amplified).
FLOAT64_CASES = [
    ("tiny", 32, 2),
    ("d2l", 64, 2),
    ("densenet_bc_100", 8, 1),
    ("densenet121", 64, 1),
]
VARIANTS = ["plain", "fast"]


def run(case):
    return run_case(case, Adapter(case))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("preset, size, steps", FLOAT64_CASES, ids=[c[0] for c in FLOAT64_CASES])
def test_float64_matches_oracle(preset, size, steps, variant, parity_case, oracle):
    case = parity_case(preset, size, "float64", steps, variant=variant)
    ours, info = run(case)
    assert info["dtype"] == "float64"
    assert_close(ours, oracle(preset, size, "float64", steps), "float64")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "preset, size, steps", [("tiny", 32, 2), ("d2l", 64, 2)], ids=["tiny", "d2l"]
)
def test_float32_within_derived_bound(preset, size, steps, variant, parity_case, oracle):
    case = parity_case(preset, size, "float32", steps, variant=variant)
    ours, info = run(case)
    assert info["precision"]["TF_ENABLE_ONEDNN_OPTS"] == os.environ["TF_ENABLE_ONEDNN_OPTS"]
    oracle64 = oracle(preset, size, "float64", steps)
    e32 = rel_errors(oracle(preset, size, "float32", steps), oracle64)
    assert_close(ours, oracle64, "float32", float32_errors=e32)


@pytest.mark.parametrize("variant", VARIANTS)
def test_memory_efficient_matches_oracle(variant, parity_case, oracle):
    """Recomputed dense layers: same numbers, running statistics updated once per step."""
    case = parity_case("tiny", 32, "float64", 2, memory_efficient=True, variant=variant)
    ours, info = run(case)
    assert info["memory_efficient"] is True
    assert_close(ours, oracle("tiny", 32, "float64", 2), "float64")
