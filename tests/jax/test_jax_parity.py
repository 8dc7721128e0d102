"""The JAX DenseNet against the NumPy oracle (densenet_spec.reference) and against itself.

float64: every quantity within the tolerance table (semantics). float32: within the bound derived
from the oracle's own float32 rounding on the same case. memory_efficient (nnx.remat) == plain.
Cases, cached results and the x64 switch live in conftest.py.
"""

import pytest

jax = pytest.importorskip("jax")

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from densenet_jax.model import DenseNet  # noqa: E402
from densenet_jax.train import gradients, loss_fn  # noqa: E402
from densenet_jax.weights import from_canonical  # noqa: E402
from densenet_spec import reference  # noqa: E402
from densenet_spec.compare import assert_close, rel_errors  # noqa: E402

FLOAT64 = ["tiny", "tiny_biased_var", "d2l", "densenet_bc_100"]


@pytest.mark.parametrize("name", FLOAT64)
def test_float64_matches_oracle(name, jax_results, oracle_results):
    ours, oracle = jax_results(name), oracle_results(name)
    assert list(ours) == list(oracle)
    assert_close(ours, oracle, "float64")


def test_densenet121_32px_eval_mode_matches_oracle(parity_case, jax_results, oracle_results):
    """Eval-mode outputs, and train.gradients in eval mode (input and every parameter).

    Train mode is not checked at 32x32: the last block is 1x1 and its BatchNorms see 2 values
    per channel, which amplifies float64 rounding to ~5e-9 (torch measures the same).
    """
    assert_close(jax_results("densenet121"), oracle_results("densenet121"), "float64")
    case = parity_case("densenet121")
    model = nnx.eval_shape(lambda: DenseNet(case.config, dtype=np.float64))
    from_canonical(model, case.params)
    loss, grad_input, grads = gradients(model, case.x.transpose(0, 2, 3, 1), case.y, False)
    want_loss, want_input, want_grads = reference.gradients(
        case.params, case.config, case.x, case.y, training=False
    )
    ours = {"input": np.asarray(grad_input).transpose(0, 3, 1, 2), **grads}
    want = {"input": want_input, **want_grads}
    assert_close({f"eval_grad/{k}": v for k, v in ours.items()},
                 {f"eval_grad/{k}": v for k, v in want.items()}, "float64")
    assert_close({"loss/eval": np.asarray(loss)}, {"loss/eval": np.asarray(want_loss)}, "float64")


@pytest.mark.parametrize("name", ["tiny", "d2l"])
def test_float32_matches_oracle_within_derived_bound(name, jax_results, oracle_results,
                                                     oracle64_of_float32):
    ours, oracle64 = jax_results(name, "float32"), oracle64_of_float32(name)
    assert {v.dtype for v in ours.values()} == {np.dtype("float32")}
    float32_errors = rel_errors(oracle_results(name, "float32"), oracle64)
    assert_close(ours, oracle64, "float32", float32_errors=float32_errors)


@pytest.mark.parametrize("name", ["tiny"])
def test_memory_efficient_matches_plain(name, jax_results):
    """nnx.remat'd dense layers: same numbers, running statistics updated once per step."""
    plain, efficient = jax_results(name), jax_results(name, memory_efficient=True)
    assert_close(efficient, plain, "float64")
    for key in plain:
        if key.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(efficient[key], plain[key], rtol=0, atol=1e-12)


def test_memory_efficient_recomputes_in_backward(parity_case):
    """The remat is really there: the gradient's jaxpr holds a checkpoint (remat) primitive."""
    case = parity_case("tiny")

    def jaxpr_text(memory_efficient):
        model = nnx.eval_shape(lambda: DenseNet(case.config, memory_efficient, dtype=np.float64))
        from_canonical(model, case.params)
        model.train()

        def loss(model, x):
            return loss_fn(model(x), case.y)

        return str(jax.make_jaxpr(nnx.grad(loss))(model, case.x.transpose(0, 2, 3, 1)))

    assert "remat" in jaxpr_text(True) or "checkpoint" in jaxpr_text(True)
    assert "remat" not in jaxpr_text(False) and "checkpoint" not in jaxpr_text(False)
