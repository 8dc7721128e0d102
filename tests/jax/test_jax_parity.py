"""The JAX DenseNet, plain and fast variants, against the NumPy oracle (densenet_spec.reference)
and against itself.

float64: every quantity within the tolerance table (semantics). float32: within the bound derived
from the oracle's own float32 rounding on the same case. memory_efficient (recomputed) == plain.
Cases, cached results and the x64 switch live in conftest.py.
"""

import os
import subprocess
import sys

import pytest

jax = pytest.importorskip("jax")

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from densenet_jax.train import gradients, loss_fn, make_optimizer, train_step  # noqa: E402
from densenet_jax.variants import make_model  # noqa: E402
from densenet_jax.weights import from_canonical, to_canonical  # noqa: E402
from densenet_spec import reference  # noqa: E402
from densenet_spec.compare import assert_close, rel_errors  # noqa: E402
from densenet_spec.config import get_preset  # noqa: E402
from densenet_spec.frameworks import VARIANTS  # noqa: E402

FLOAT64 = ["tiny", "tiny_biased_var", "d2l", "densenet_bc_100"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", FLOAT64)
def test_float64_matches_oracle(name, variant, jax_results, oracle_results):
    ours, oracle = jax_results(name, variant=variant), oracle_results(name)
    assert list(ours) == list(oracle)
    assert_close(ours, oracle, "float64")


@pytest.mark.parametrize("variant", VARIANTS)
def test_densenet121_32px_eval_mode_matches_oracle(
    variant, parity_case, jax_results, oracle_results
):
    """Eval-mode outputs, and train.gradients in eval mode (input and every parameter).

    Train mode is not checked at 32x32: the last block is 1x1 and its BatchNorms see 2 values
    per channel, which amplifies float64 rounding to ~5e-9 (torch measures the same).
    """
    ours = jax_results("densenet121", variant=variant)
    assert_close(ours, oracle_results("densenet121"), "float64")
    case = parity_case("densenet121")
    model = nnx.eval_shape(lambda: make_model(case.config, variant, dtype=np.float64))
    from_canonical(model, case.params)
    loss, grad_input, grads = gradients(model, case.x.transpose(0, 2, 3, 1), case.y, False)
    want_loss, want_input, want_grads = reference.gradients(
        case.params, case.config, case.x, case.y, training=False
    )
    ours = {"input": np.asarray(grad_input).transpose(0, 3, 1, 2), **grads}
    want = {"input": want_input, **want_grads}
    assert_close(
        {f"eval_grad/{k}": v for k, v in ours.items()},
        {f"eval_grad/{k}": v for k, v in want.items()},
        "float64",
    )
    assert_close({"loss/eval": np.asarray(loss)}, {"loss/eval": np.asarray(want_loss)}, "float64")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ["tiny", "d2l"])
def test_float32_matches_oracle_within_derived_bound(
    name, variant, jax_results, oracle_results, oracle64_of_float32
):
    ours, oracle64 = jax_results(name, "float32", variant=variant), oracle64_of_float32(name)
    assert {v.dtype for v in ours.values()} == {np.dtype("float32")}
    float32_errors = rel_errors(oracle_results(name, "float32"), oracle64)
    assert_close(ours, oracle64, "float32", float32_errors=float32_errors)


@pytest.mark.parametrize("variant", VARIANTS)
def test_memory_efficient_matches_plain(variant, jax_results, oracle_results):
    """Recomputed dense layers: the same numbers, running statistics updated once per step."""
    plain = jax_results("tiny")
    efficient = jax_results("tiny", memory_efficient=True, variant=variant)
    assert_close(efficient, oracle_results("tiny"), "float64")
    assert_close(efficient, plain, "float64")
    for key in plain:
        if key.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(efficient[key], plain[key], rtol=0, atol=1e-12)


def _compiled_temp_bytes(config, memory_efficient: bool) -> int:
    """XLA's temp size (every intermediate) of the compiled train-mode gradient, batch 2, 32x32."""
    model = nnx.eval_shape(lambda: make_model(config, "plain", memory_efficient, dtype=np.float64))
    model.train()
    graphdef, state = nnx.split(model)

    def loss(state, x):
        return loss_fn(nnx.merge(graphdef, state)(x), np.zeros(2, np.int32))

    x = jax.ShapeDtypeStruct((2, 32, 32, config.in_channels), np.float64)
    compiled = jax.jit(jax.value_and_grad(loss)).lower(state, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_efficient_saves_memory_once_compiled():
    """The recomputation survives XLA and frees the layers' intermediates (two 6-layer blocks).
    nnx.remat / jax.checkpoint fail this on CPU: XLA's CPU compiler drops their optimization
    barriers, so nothing orders the recomputation after the forward pass or keeps CSE from
    merging it back."""
    config = get_preset("tiny").replace(block_config=(6, 6), growth_rate=8)
    plain, efficient = _compiled_temp_bytes(config, False), _compiled_temp_bytes(config, True)
    assert efficient < 0.8 * plain, (plain, efficient)


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_train_step_updates_running_statistics_exactly_once(parity_case, memory_efficient, request):
    """train_step moves a dense layer's running statistics one momentum step towards the batch
    statistics; the same check fails for a second update (a recomputation that updated them
    again), which moves them (1 - m)^2 instead of (1 - m) of the way."""
    if os.environ.get("DENSENET_JAX_ISOLATED") != "1":
        # jaxlib 0.10.2's XLA:CPU compiler segfaults on this train step after the suite's other
        # compilations in one process (CI, twice); alone it compiles and passes: a fresh process.
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid],
            env={**os.environ, "DENSENET_JAX_ISOLATED": "1"},
            cwd=request.config.rootpath,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert " passed" in proc.stdout
        return
    case = parity_case("tiny")
    model = nnx.eval_shape(
        lambda: make_model(case.config, "plain", memory_efficient, dtype=np.float64)
    )
    from_canonical(model, case.params)
    x, y = jax.numpy.asarray(case.step_x[0].transpose(0, 2, 3, 1)), case.step_y[0]

    probe = nnx.clone(model, arrays=True)  # block 0's input: the stem's train-mode output
    probe.train()
    block_input = np.asarray(probe.stem(x))
    mean, var = block_input.mean(axis=(0, 1, 2)), block_input.var(axis=(0, 1, 2))
    n = block_input[..., 0].size
    m = case.config.bn_momentum  # the weight of the batch statistic (torch's convention)
    name = "blocks.0.layers.0.norm1"
    old_mean = np.array(case.params[f"{name}.running_mean"])
    old_var = np.array(case.params[f"{name}.running_var"])

    def moved(steps):
        keep = (1 - m) ** steps
        return keep * old_mean + (1 - keep) * mean, keep * old_var + (1 - keep) * var * n / (n - 1)

    train_step(model, make_optimizer(model, case.sgd), x, y)
    after = to_canonical(model)
    (once_mean, once_var), (twice_mean, twice_var) = moved(1), moved(2)
    np.testing.assert_allclose(after[f"{name}.running_mean"], once_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(after[f"{name}.running_var"], once_var, rtol=1e-12, atol=1e-12)
    assert np.max(np.abs(twice_mean - once_mean)) > 1e-4
    assert np.max(np.abs(twice_var - once_var)) > 1e-4
