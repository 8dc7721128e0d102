"""Every framework against the oracle and each other, in one run, each in its own environment."""

import dataclasses

import numpy as np
import pytest

import densenet_envs as envs
from densenet_spec.case import make_case
from densenet_spec.config import get_preset
from densenet_spec.harness import expected_divergence, run_parity, self_check

FRAMEWORKS = list(envs.FRAMEWORKS)
quiet = lambda msg: None  # noqa: E731


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_all_frameworks_agree_on_tiny(require_envs, dtype):
    require_envs(*FRAMEWORKS)
    case = make_case(get_preset("tiny"), batch=3, image_size=32, dtype=dtype, steps=2)
    report = run_parity(case, FRAMEWORKS, setup=False, log=quiet)
    failed = {n: r.error for n, r in report.runs.items() if not r.ok}
    assert not failed, failed
    pairs = {(p.a, p.b) for p in report.pairs}
    assert len(pairs) == 4 + 6  # each framework vs the oracle, and every pair of frameworks
    bad = [
        (p.a, p.b, c.key, c.error, c.bound) for p in report.pairs for c in p.comparisons if not c.ok
    ]
    assert not bad, bad[:10]
    for p in report.pairs:
        assert len(p.comparisons) == len(report.pairs[0].comparisons)
    if dtype == "float64":
        assert max(c.bound for p in report.pairs for c in p.comparisons) <= 1e-9
    else:  # gradients against their rounding scale: bounds at float32's rounding (issue 24)
        grads = [c for p in report.pairs for c in p.comparisons if c.key.startswith("train_grad/")]
        assert grads and max(c.bound for c in grads) <= 1e-3


def test_weights_survive_a_round_trip_through_every_framework(require_envs):
    """oracle file -> torch -> jax -> tf -> mx -> file: bit-identical tensors, so identical outputs.

    steps=0: each worker loads the canonical tensors into its own model (transposing where its
    layout differs) and exports them again with to_canonical; the next framework starts from that.
    """
    require_envs(*FRAMEWORKS)
    case = make_case(get_preset("tiny"), image_size=32, steps=0, quantities=("eval", "step"))
    original, params = case.params, case.params
    logits = {}
    for fw in FRAMEWORKS + ["torch"]:
        hop = dataclasses.replace(case, params=params)
        report = run_parity(hop, [fw], setup=False, log=quiet)
        run = report.runs[fw]
        assert run.ok, run.error
        params = {k[len("step/") :]: v for k, v in run.results.items() if k.startswith("step/")}
        logits.setdefault(fw, []).append(run.results["eval/logits"])
    assert set(params) == set(original)
    for k in original:
        np.testing.assert_array_equal(params[k], original[k], err_msg=k)
    # torch ran first on the original file and last on the file every framework had rewritten
    np.testing.assert_array_equal(logits["torch"][0], logits["torch"][1])


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("kind", ["bn_eps", "same_padding"])
def test_mutation_self_check_names_the_first_diverging_stage(require_envs, framework, kind):
    require_envs(framework)
    case = make_case(get_preset("tiny"), image_size=32, quantities=("eval", "train"))
    report = run_parity(case, [framework], setup=False, log=quiet, mutations={framework: kind})
    (pair,) = report.pairs
    assert not pair.ok
    want = expected_divergence(case.config, kind)
    assert pair.first_divergence() == {"eval": want, "train": want}
    assert self_check(report) == []


def test_mutation_after_the_stem_is_found_there(require_envs):
    """CIFAR stem has no BatchNorm: eps 1e-3 first shows in block 0, layer 0, not in the stem."""
    require_envs("torch")
    case = make_case(get_preset("densenet_bc_100"), image_size=8, quantities=("eval",))
    report = run_parity(case, ["torch"], setup=False, log=quiet, mutations={"torch": "bn_eps"})
    assert report.pairs[0].first_divergence() == {"eval": "blocks.0.layers.0"}
