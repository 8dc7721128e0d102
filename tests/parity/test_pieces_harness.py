"""Float32 gradients compared on each framework's own linear piece, through the real harness: a
registered throwaway framework (the oracle as an adapter, in the spec environment) whose float32
gradients are taken on another piece than the oracle's, on purpose (pieces.py, tolerances.py)."""

from __future__ import annotations

import dataclasses
import json
import textwrap

import numpy as np
import pytest

from densenet_spec import frameworks, pieces, reference
from densenet_spec.case import make_case
from densenet_spec.compare import compare
from densenet_spec.config import get_preset
from densenet_spec.harness import ORACLE, oracle_results, report_notes, run_parity, self_check
from densenet_spec.report_files import html_page, markdown
from densenet_spec.tolerances import is_exact_zero

# The oracle as a framework. FLIP: its train-mode pieces put the FLIP BatchNorm outputs nearest 0
# on the other side (what another float32 rounding does, concentrated where it matters), and its
# gradients and first SGD step are taken on that piece. REVERSE: it computes on the batch reversed
# (another summation order, so other rounding). LIE: it reports the unflipped values (a framework
# misreporting its piece). UNAVAILABLE: it cannot report its piece and says why.
FAKE_ADAPTER = textwrap.dedent(
    """
    import numpy as np

    from densenet_spec import reference
    from densenet_spec.driver import Gradients

    FLIP, LIE, REVERSE = {flip!r}, {lie!r}, {reverse!r}


    def _flip_nearest(pre, k):
        near = sorted((abs(float(v.flat[i])), n, int(i))
                      for n, v in pre.items() for i in np.argsort(np.abs(v), axis=None)[:k])[:k]
        out = {{n: v.copy() for n, v in pre.items()}}
        for _, n, i in near:
            out[n].flat[i] = -out[n].flat[i]
        return out


    class Adapter:
        pieces_unavailable = {unavailable!r}

        def __init__(self, case):
            self.case, self.config = case, case.config
            self.info = {{"device": case.device, "dtype": case.dtype}}

        def build(self):
            return dict(self.case.params)

        def images(self, x):
            return np.ascontiguousarray(np.asarray(x)[::-1] if REVERSE else np.asarray(x))

        labels = images

        def stage_outputs(self, model, x, training):
            return reference.forward_features(model, self.config, x, training)[0]

        def loss(self, logits, y):
            return reference.loss(logits, y)

        def _piece(self, model, x, training):
            pre = reference.relu_inputs(model, self.config, x, training)
            if training and FLIP:
                pre = _flip_nearest(pre, FLIP)
            stem = np.maximum(pre["stem.norm"], 0) if "stem.norm" in pre else None
            pool = None if stem is None else reference.max_pool_choice(stem)
            return pre, {{n: v > 0 for n, v in pre.items()}}, pool

        def gradients(self, model, x, y, training):
            pre, masks, pool = self._piece(model, x, training)
            loss, gx, g = reference.gradients(model, self.config, x, y, training,
                                              relu_masks=masks, pool_choice=pool)
            if LIE:
                pre = reference.relu_inputs(model, self.config, x, training)
            if self.pieces_unavailable:
                pre = None
            return Gradients(loss, gx, g if training else None, preactivations=pre)

        def make_optimizer(self, model):
            return {{"buffers": None}}

        def train_step(self, model, optimizer, x, y):
            _, masks, pool = self._piece(model, x, True)
            _, _, g = reference.gradients(model, self.config, x, y, True,
                                          relu_masks=masks, pool_choice=pool)
            _, running = reference.forward_features(model, self.config, x, True)
            new, optimizer["buffers"] = reference.sgd_step(model, g, optimizer["buffers"],
                                                           self.case.sgd)
            model.update(new)
            model.update(running)

        def to_numpy(self, t):
            t = np.asarray(t)
            return np.ascontiguousarray(t[::-1]) if REVERSE and t.ndim else t

        def to_canonical(self, model):
            return dict(model)
    """
)

quiet = lambda msg: None  # noqa: E731


@pytest.fixture
def fake(tmp_path, monkeypatch, require_envs):
    """fake(name, flip=0, lie=False, reverse=False, unavailable=None) registers densenet_<name>."""
    require_envs("spec")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(name="fake", flip=0, lie=False, reverse=False, unavailable=None) -> str:
        package = tmp_path / f"densenet_{name}"
        package.mkdir()
        (package / "__init__.py").write_text("")
        code = FAKE_ADAPTER.format(flip=flip, lie=lie, reverse=reverse, unavailable=unavailable)
        (package / "adapter.py").write_text(code)
        entry = frameworks.Framework(
            name=name,
            title="NumPy on another linear piece",
            package=f"densenet_{name}",
            requirements="spec",
            layout="NCHW",
            tests="tests/spec",
            peer="",
        )
        monkeypatch.setitem(frameworks.FRAMEWORKS, name, entry)
        return name

    return install


def _case(dtype="float32", near_kink: int = 3, steps: int = 1):
    """tiny, 16 px, with `near_kink` train-mode BatchNorm outputs moved to within 1e-6 of 0 (their
    channels' beta shifted), where float32 rounding can put them on either side, as on
    DenseNet-121: so a flip there is within the forward bound, as a real framework's would be."""
    case = make_case(get_preset("tiny"), batch=2, image_size=16, steps=steps, dtype=dtype)
    params, x = dict(case.params), case.x.astype(np.float64)
    for _ in range(near_kink):
        pre = reference.relu_inputs(
            {k: v.astype(np.float64) for k, v in params.items()}, case.config, x, True
        )
        far = {n: v for n, v in pre.items() if np.abs(v).min() > 1e-5}  # one entry per BN
        name = min(far, key=lambda n: np.abs(far[n]).min())
        i = np.unravel_index(np.abs(far[name]).argmin(), far[name].shape)
        value = far[name][i]
        beta = params[f"{name}.bias"].copy()
        beta[i[1]] -= value - np.sign(value) * 1e-6
        params[f"{name}.bias"] = beta
    return dataclasses.replace(case, params=params)


def _failed(report):
    return {(p.a, p.b): [c.key for c in p.comparisons if not c.ok] for p in report.pairs}


def test_a_framework_on_another_piece_passes_on_its_own_piece(fake):
    name = fake(flip=3)
    case = _case()
    report = run_parity(case, [name], setup=False, log=quiet)
    assert report.runs[name].ok, report.runs[name].error
    assert report.ok, _failed(report)
    pieces = report.pieces[name]
    assert pieces["reported"] and pieces["eval"]["relu"] == 0
    assert pieces["train"]["relu"] == 3 and pieces["train"]["pool"] == 0
    assert len(pieces["train"]["where"]) == 3  # one near-kink entry in each of 3 BatchNorms
    grads = [c for c in report.pairs[0].comparisons if c.key.startswith("train_grad/")]
    assert max(c.bound for c in grads) <= 1e-3  # rounding alone: no kink allowance
    # measured against each gradient's rounding scale, which the report names
    assert set(report.rounding_scales) >= {c.key for c in grads if not is_exact_zero(c.key)}
    assert all(s >= v for s, v in report.rounding_scales.values())
    assert "measured against their rounding scale" in report_notes(report)[0]
    # the same results against the oracle's own piece fail by ~100x the bound: what a flip does
    truth = oracle_results(case)
    plain = compare(report.runs[name].results, truth.truth, "float32", truth.float32_errors)
    assert max(c.error / c.bound for c in plain if c.key.startswith("train_grad/")) > 30
    assert all(c.ok for c in plain if not c.key.startswith(("train_grad/", "step/")))
    # the report says where
    md = markdown(report)
    assert pieces["steps"]["relu"] == 3  # its one SGD step: the same forward, the same flips
    assert "## Linear pieces" in md and f"{next(iter(pieces['train']['where']))} (2)" in md
    assert "Linear pieces" in html_page(report)
    assert json.loads(json.dumps(report.to_json()))["frameworks"][name]["pieces"] == pieces


def test_every_sgd_step_is_compared_on_its_own_piece(fake):
    """3 steps, 3 flipped entries in each step's forward: the parameters after the steps pass,
    because the float64 trajectory takes the piece each step reported; with only step 0's piece
    (the rule before step pieces) the later steps' flips are jumps the float32 bound cannot
    cover. The fake flips by negating its BatchNorm outputs, which is within rounding only where
    _case put them near 0 (step 0): its later reported outputs are off, and fail by name."""
    name = fake(flip=3)
    case = _case(steps=3)
    report = run_parity(case, [name], setup=False, log=quiet)
    failed = _failed(report)[(name, ORACLE)]
    assert failed and all(k.startswith(("step_piece/1/", "step_piece/2/")) for k in failed)
    assert report.pieces[name]["steps"]["relu"] >= 9  # and what its trajectory moved
    oracle = oracle_results(report.case)
    results = report.runs[name].results
    only_first = {k: v for k, v in pieces.pieces_of(results, case.config).items() if k != "steps"}
    ref = pieces.on_piece(report.case, only_first, oracle.truth, oracle.pieces)
    steps = {k: v for k, v in ref.items() if k.startswith("step/")}
    old = compare(results, steps, "float32", oracle.float32_errors)
    assert not all(c.ok for c in old)


def test_a_framework_misreporting_its_piece_fails(fake):
    name = fake(flip=3, lie=True)
    report = run_parity(_case(), [name], setup=False, log=quiet)
    assert report.runs[name].ok
    failed = _failed(report)[(name, ORACLE)]
    assert failed and all(k.startswith(("train_grad/", "step/")) for k in failed)
    assert report.pieces[name]["train"]["relu"] == 0  # it claims the oracle's piece


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_grad_scale_mutation_fails_and_names_the_tensor(fake, dtype):
    name = fake()
    report = run_parity(
        _case(dtype), [name], setup=False, log=quiet, mutations={name: "grad_scale"}
    )
    (pair,) = report.pairs
    assert not pair.ok
    assert [c.key for c in pair.comparisons if not c.ok] == ["train_grad/stem.conv.weight"]
    assert pair.first_divergence() == {"train_grad": "stem.conv.weight"}
    assert self_check(report) == []


def test_a_framework_that_cannot_report_its_piece_gets_the_kink_fallback(fake):
    name, other = fake(unavailable="fused BN+ReLU"), fake("other")
    report = run_parity(_case(), [name, other], setup=False, log=quiet)
    assert report.runs[name].ok, report.runs[name].error
    assert report.runs[name].info["pieces"] == "fused BN+ReLU"
    assert report.pieces[name] == {"reported": False, "reason": "fused BN+ReLU"}
    assert report.ok, _failed(report)
    pair = next(p for p in report.pairs if {p.a, p.b} == {name, other})
    assert pair.pieces == {"reported": False, "reason": "fake: fused BN+ReLU"}
    assert not any("_piece/" in c.key for c in pair.comparisons)
    assert "not reported: fused BN+ReLU" in markdown(report)


def test_pairs_are_compared_through_the_oracle(fake):
    """flip and reverse sit on different pieces; their direct difference is a kink, not rounding,
    and a + (oracle on b's piece - oracle on a's) against b is rounding again."""
    a, b = fake("flipped", flip=3), fake("reversed", reverse=True)
    report = run_parity(_case(), [a, b], setup=False, log=quiet)
    assert report.ok, _failed(report)
    pair = next(p for p in report.pairs if (p.a, p.b) == (a, b))
    assert pair.pieces["reported"] and pair.pieces["train"]["relu"] >= 1
    direct = compare(
        report.runs[a].results,
        report.runs[b].results,
        "float32",
        oracle_results(report.case).float32_errors,
        symmetric=True,
    )
    assert not all(c.ok for c in direct)


def test_the_float32_oracle_reversed_is_on_its_own_piece(fake):
    """Another summation order only: passes, and the float32 gradient bounds stay at rounding."""
    name = fake(reverse=True)
    report = run_parity(_case(), [name], setup=False, log=quiet)
    assert report.ok, _failed(report)
    bounds = [c.bound for c in report.pairs[0].comparisons if c.key.startswith("train_grad/")]
    assert max(bounds) <= 1e-3
    np.testing.assert_array_equal(
        report.runs[name].results["train/logits"].shape, (2, get_preset("tiny").num_classes)
    )
