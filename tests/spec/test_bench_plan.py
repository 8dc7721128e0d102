"""densenet-bench's targets (read from the framework registry) and its run plan."""

import pytest

from densenet_bench import cli, plan, targets
from densenet_spec.config import PRESETS
from densenet_spec.errors import DenseNetError
from densenet_spec.frameworks import FRAMEWORKS, VARIANTS


def test_ours_are_the_registry_and_each_peer_follows_its_framework():
    ours = [t.name for t in targets.TARGETS.values() if t.ours]
    assert ours == list(FRAMEWORKS)
    order = list(targets.TARGETS)
    for fw in FRAMEWORKS.values():
        target = targets.TARGETS[fw.name]
        assert (target.env, target.runner, target.models) == (fw.requirements, fw.name, VARIANTS)
        assert targets.peer_of(fw.name) == fw.peer
        peer = targets.TARGETS[fw.peer]
        assert order.index(fw.peer) == order.index(fw.name) + 1
        assert peer.framework == fw.name and not peer.ours and peer.models == (None,)


def test_every_target_has_a_runner_with_literal_variants():
    for t in targets.TARGETS.values():
        assert t.variants and len(set(t.variants)) == len(t.variants), t.name
    assert targets.TARGETS["torch"].variants == ("eager", "channels_last", "compile")
    assert "functional" in targets.fast_paths() and "eager" not in targets.fast_paths()
    with pytest.raises(DenseNetError, match="runners/caffe.py"):
        targets.runner_variants("caffe")


def test_a_new_registry_entry_is_a_target_without_further_tables(monkeypatch):
    from dataclasses import replace

    new = replace(FRAMEWORKS["torch"], name="torch2", package="densenet_torch2", peer="none")
    monkeypatch.setitem(FRAMEWORKS, "torch2", new)
    found = targets._all_targets()
    assert found["torch2"].ours and found["torch2"].runner == "torch2"
    assert "none" not in found  # a peer nobody describes is left out, not guessed


def _plan(argv):
    runs, notes = plan.plan(cli.parse_args(argv))
    return [(r.target, r.env, r.request) for r in runs], notes


def test_plan_measures_each_baseline_and_only_the_fast_paths_asked_for():
    runs, _ = _plan(
        ["--frameworks", "torch,jax", "--fast", "compile", "--mode", "train", "--model", "fast"]
    )
    assert [(t.name, r.variant, r.mode) for t, _, r in runs] == [
        ("torch", "eager", "train"),
        ("torch", "compile", "train"),
        ("jax", "jit", "train"),
    ]
    runs, _ = _plan(["--frameworks", "mx", "--fast", "all", "--batch", "1,8", "--model", "fast"])
    assert {(r.variant, r.batch) for _, _, r in runs} == {
        (v, b) for v in ("imperative", "hybridize") for b in (1, 8)
    }


def test_plan_puts_each_peer_after_ours_and_skips_what_peers_lack():
    runs, notes = _plan(
        ["--peers", "--preset", "densenet161", "--mode", "infer", "--model", "fast"]
    )
    assert [t.name for t, _, _ in runs] == ["torch", "torchvision", "jax", "tf", "mx", "gluon"]
    assert any("keras-jax" in n for n in notes) and any("keras-tf" in n for n in notes)
    runs, notes = _plan(
        [
            "--peers",
            "--preset",
            "tiny",
            "--frameworks",
            "torch",
            "--memory-efficient",
            "--model",
            "plain",
        ]
    )
    assert [t.name for t, _, _ in runs] == ["torch", "torch"]
    assert all(r.memory_efficient for _, _, r in runs)


def test_plan_measures_plain_and_memory_efficient_side_by_side_where_asked():
    runs, notes = _plan(
        [
            "--frameworks",
            "torch,mx",
            "--peers",
            "--memory-efficient",
            "both",
            "--mode",
            "train",
            "--preset",
            "densenet201,densenet264",
            "--model",
            "fast",
        ]
    )
    got = [(t.name, r.preset, r.memory_efficient) for t, _, r in runs]
    assert got == [
        ("torch", "densenet201", False),
        ("torch", "densenet201", True),
        ("torch", "densenet264", False),
        ("torch", "densenet264", True),
        ("torchvision", "densenet201", False),
        ("torchvision", "densenet201", True),
        ("mx", "densenet201", False),
        ("mx", "densenet201", True),  # mx says why it cannot
        ("mx", "densenet264", False),
        ("mx", "densenet264", True),
        ("gluon", "densenet201", False),  # the zoo has no checkpointing: plain only
    ]
    assert any("gluon: no memory-efficient" in n for n in notes)
    assert any("torchvision: no official densenet264" in n for n in notes)


def test_densenet264_is_the_papers_deeper_config_for_benchmarks_only():
    c = plan.BENCH_PRESETS["densenet264"]
    assert c.block_config == (6, 12, 64, 48) and c.growth_rate == 32
    assert "densenet264" not in PRESETS
    with pytest.raises(DenseNetError, match="densenet264"):  # the message lists it as known
        _plan(["--preset", "densenet999"])


@pytest.mark.parametrize(
    "argv",
    [
        ["--frameworks", "caffe"],
        ["--fast", "turbo"],
        ["--batch", "0"],
        ["--env", "torch"],
        ["--rounds", "0"],
        ["--model", "turbo"],
        ["--model", ","],
    ],
)
def test_plan_rejects_bad_options_by_name(argv):
    with pytest.raises(DenseNetError):
        _plan(argv)


def test_plan_measures_each_model_variant_of_ours_and_each_peer_once():
    runs, _ = _plan(["--frameworks", "torch", "--peers", "--mode", "train"])
    assert [(t.name, r.model, r.variant) for t, _, r in runs] == [
        ("torch", "plain", "eager"),
        ("torch", "fast", "eager"),
        ("torchvision", None, "eager"),
    ]
    runs, _ = _plan(["--frameworks", "jax", "--model", "plain", "--mode", "infer"])
    assert [r.model for _, _, r in runs] == ["plain"]


def test_rounds_alternate_the_order():
    runs = ["a", "b"]
    assert plan.schedule(runs, 3) == [(1, "a"), (1, "b"), (2, "b"), (2, "a"), (3, "a"), (3, "b")]
