"""The oracle on a given linear piece (reference relu_masks / pool_choice, pieces.py) and the
driver's side of the protocol (preactivations, pieces_unavailable, the grad_scale mutation)."""

import dataclasses

import numpy as np
import pytest

from densenet_spec import pieces, reference
from densenet_spec.case import as_dtype, make_case, relu_names, result_keys
from densenet_spec.config import get_preset
from densenet_spec.driver import GRAD_SCALE, Gradients, PiecesMissingError, run_case
from densenet_spec.tolerances import is_exact_zero


@pytest.fixture(scope="module")
def tiny():
    case = make_case(
        get_preset("tiny"), dtype="float32", image_size=16, steps=1, options={"pieces": True}
    )
    c64 = as_dtype(case, "float64")
    truth, _ = reference.run_case(c64)
    return case, c64, truth


def _grads(c64, piece, training=True):
    return reference.gradients(
        c64.params,
        c64.config,
        c64.x,
        c64.y,
        training,
        relu_masks=piece.masks,
        pool_choice=piece.pool,
    )


def _flip_nearest(pre: dict, k: int) -> dict:
    """pre with the k entries nearest 0 (over every BatchNorm) negated."""
    near = sorted(
        (abs(float(v.flat[i])), n, int(i))
        for n, v in pre.items()
        for i in np.argsort(np.abs(v), axis=None)[:k]
    )[:k]
    out = {n: v.copy() for n, v in pre.items()}
    for _, n, i in near:
        out[n].flat[i] = -out[n].flat[i]
    return out


def test_own_piece_is_the_ordinary_gradient_bit_for_bit(tiny):
    case, c64, truth = tiny
    own = pieces.oracle_pieces(c64)
    for mode in ("eval", "train"):
        _, gx, g = _grads(c64, own[mode], mode == "train")
        np.testing.assert_array_equal(gx, truth[f"{mode}_grad/input"])
        if mode == "train":
            assert all(np.array_equal(g[n], truth[f"train_grad/{n}"]) for n in g)
    # the worker's piece keys give the same pieces as relu_inputs does
    from_keys = pieces.pieces_of(truth, case.config)
    assert all(from_keys[m].same_as(own[m]) for m in pieces.MODES)
    assert len(own["steps"]) == case.steps == len(from_keys["steps"])
    assert all(a.same_as(b) for a, b in zip(from_keys["steps"], own["steps"]))
    assert set(own["train"].masks) == set(relu_names(case.config))
    assert own["train"].pool.shape == (2, 7, 4, 4) and own["train"].pool.max() <= 8


def test_one_flipped_mask_entry_is_the_kink_hook_forcing_that_entry(tiny):
    """Two independent ways to put one entry on the other piece give the same float64 gradient."""
    case, c64, _ = tiny
    pre = reference.relu_inputs(c64.params, c64.config, c64.x, True)
    name = "blocks.1.layers.0.norm1"
    a = np.sort(np.abs(pre[name]).ravel())
    flipped = dict(pre)
    flipped[name] = np.where(np.abs(pre[name]) == a[0], -pre[name], pre[name])
    _, gx, g = _grads(c64, pieces.piece_of(flipped, case.config))
    forced = 0 if pre[name].ravel()[np.argmin(np.abs(pre[name]))] > 0 else 1
    _, kx, k = reference.gradients(
        c64.params,
        c64.config,
        c64.x,
        c64.y,
        True,
        kink_threshold={name: float((a[0] + a[1]) / 2)},
        kink_derivative=forced,
    )
    np.testing.assert_array_equal(gx, kx)
    assert all(np.array_equal(g[n], k[n]) for n in g)


def test_pool_ties_at_zero_do_not_matter_positive_choices_do(tiny):
    """A window whose maximum is 0 holds only entries with pre <= 0, whose ReLU masks are 0: any
    choice there gives the same gradient. Moving a positive window's choice moves the gradient."""
    case, c64, truth = tiny
    own = pieces.oracle_pieces(c64)["train"]
    pre = reference.relu_inputs(c64.params, c64.config, c64.x, True)["stem.norm"]
    cols = np.lib.stride_tricks.sliding_window_view(
        np.pad(np.maximum(pre, 0), ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf),
        (3, 3),
        axis=(2, 3),
    )[:, :, ::2, ::2].reshape(*own.pool.shape, 9)
    top = cols.max(axis=-1)
    zero, positive = np.argwhere(top == 0), np.argwhere(top > 0)
    assert len(zero) and len(positive)
    for where, changes in ((zero[0], False), (positive[0], True)):
        w = tuple(where)
        other = next(i for i in range(9) if i != own.pool[w] and np.isfinite(cols[w][i]))
        pool = own.pool.copy()
        pool[w] = other
        _, gx, g = _grads(c64, pieces.Piece(own.masks, pool))
        same = np.array_equal(gx, truth["train_grad/input"]) and all(
            np.array_equal(g[n], truth[f"train_grad/{n}"]) for n in g
        )
        assert same is not changes
    with pytest.raises(ValueError, match="max-pool choice"):
        _grads(c64, pieces.Piece(own.masks, own.pool[:, :, :2]))
    with pytest.raises(ValueError, match="ReLU mask for head.norm"):
        _grads(c64, pieces.Piece({k: v for k, v in own.masks.items() if k != "head.norm"}, None))


def test_on_piece_recomputes_gradients_and_the_first_step_only_where_pieces_differ(tiny):
    case, c64, truth = tiny
    own = pieces.oracle_pieces(c64)
    same = pieces.on_piece(case, own, truth, own)
    assert all(same[k] is truth[k] for k in truth)  # nothing recomputed
    pre = reference.relu_inputs(c64.params, c64.config, c64.x, True)
    fw = {"eval": own["eval"], "train": pieces.piece_of(_flip_nearest(pre, 3), case.config)}
    assert sum(pieces.differences(fw["train"], own["train"]).values()) == 3
    ref = pieces.on_piece(case, fw, truth, own)
    changed = {k for k in truth if ref[k] is not truth[k]}
    assert changed and all(k.split("/")[0] in ("train_grad", "step") for k in changed)
    _, _, g = _grads(c64, fw["train"])
    state, _ = reference.sgd_step(c64.params, g, None, c64.sgd)
    for n in g:
        np.testing.assert_array_equal(ref[f"train_grad/{n}"], g[n])
        np.testing.assert_array_equal(ref[f"step/{n}"], state[n])
    summary = pieces.summary(fw, own)
    assert summary["eval"] == {"relu": 0, "pool": 0, "where": {}}
    assert summary["train"]["relu"] + summary["train"]["pool"] >= 3


def test_on_piece_runs_the_whole_trajectory_on_each_steps_reported_piece():
    """Step k's piece flipped in 3 entries: step/ and step_piece/ keys are the float64 trajectory
    whose step k takes it (computed here step by step with gradients()), nothing else moves."""
    case = make_case(
        get_preset("tiny"), dtype="float32", image_size=16, steps=3, options={"pieces": True}
    )
    c64 = as_dtype(case, "float64")
    truth, _ = reference.run_case(c64)
    own = pieces.oracle_pieces(c64)
    assert len(own["steps"]) == 3
    assert all(v is truth[k] for k, v in pieces.on_piece(case, own, truth, own).items())
    pre1 = {n: truth[f"step_piece/1/{n}"] for n in relu_names(case.config)}
    steps = [own["steps"][0], pieces.piece_of(_flip_nearest(pre1, 3), case.config), own["steps"][2]]
    fw = {**own, "steps": steps}
    ref = pieces.on_piece(case, fw, truth, own)
    changed = {k.split("/")[0] for k in truth if ref[k] is not truth[k]}
    assert changed == {"step", "step_piece"}
    state, buffers = dict(c64.params), None
    for k, piece in enumerate(steps):
        xk, yk = c64.step_x[k], c64.step_y[k]
        for n, v in reference.relu_inputs(state, c64.config, xk).items():
            np.testing.assert_array_equal(ref[f"step_piece/{k}/{n}"], v)
        _, _, g = reference.gradients(
            state, c64.config, xk, yk, True, relu_masks=piece.masks, pool_choice=piece.pool
        )
        _, running = reference.forward_features(state, c64.config, xk, True)
        state, buffers = reference.sgd_step(state, g, buffers, c64.sgd)
        state.update(running)
    for n, v in state.items():
        np.testing.assert_array_equal(ref[f"step/{n}"], v)
    assert not np.array_equal(ref["step/stem.conv.weight"], truth["step/stem.conv.weight"])
    summary = pieces.summary(fw, own)
    assert summary["steps"]["relu"] == 3 and summary["train"]["relu"] == 0


def test_float32_errors_are_rounding_on_the_float32_oracles_own_piece(tiny):
    case, c64, truth = tiny
    own = pieces.oracle_pieces(c64)
    e32, p32 = pieces.float32_errors(case, truth, own)
    ours32, _ = reference.run_case(case)
    want = pieces.on_piece(case, p32, truth, own)
    from densenet_spec.compare import rel_errors

    # gradients in units of their rounding scale (every gradient key but the exact zeros)
    assert e32.scales == pieces.rounding_scales(case)
    grads = {k for k in e32 if "_grad/" in k}
    assert set(e32.scales) == {k for k in grads if not is_exact_zero(k)}
    assert e32 == rel_errors(ours32, want, scales=e32.scales)
    assert e32 != rel_errors(ours32, want)  # negative control: another measure
    assert set(e32) == set(result_keys(case))
    assert max(v for k, v in e32.items() if k.startswith("train_grad/")) < 1e-4


# ---------------------------------------------------------------------------------------------
# The driver's side: an in-process adapter over the oracle (NumPy is its native layout).


class OracleAdapter:
    """The float64/float32 oracle as a driver adapter; preactivations from the same pass."""

    def __init__(self, case, report=True):
        self.case, self.report = case, report
        self.info = {"device": "cpu"}

    def build(self):
        return dict(self.case.params)

    def images(self, x):
        return np.asarray(x)

    labels = images

    def stage_outputs(self, model, x, training):
        return reference.forward_features(model, self.case.config, x, training)[0]

    def loss(self, logits, y):
        return reference.loss(logits, y)

    def gradients(self, model, x, y, training):
        loss, gx, g = reference.gradients(model, self.case.config, x, y, training)
        pre = reference.relu_inputs(model, self.case.config, x, training) if self.report else None
        return Gradients(loss, gx, g if training else None, preactivations=pre)

    def make_optimizer(self, model):
        return None

    def train_step(self, model, optimizer, x, y):
        raise AssertionError("no steps in these cases")

    def to_numpy(self, t):
        return np.asarray(t)

    def to_canonical(self, model):
        return model


def _case(**options):
    return make_case(
        get_preset("tiny"),
        image_size=16,
        steps=0,
        dtype="float32",
        quantities=("eval", "train", "grad"),
        options=options,
    )


def test_driver_returns_piece_keys_from_the_gradient_pass():
    case = _case(pieces=True)
    results, _ = run_case(case, OracleAdapter(case))
    assert list(results) == result_keys(case)
    want = reference.relu_inputs(case.params, case.config, case.x, True)
    for n in relu_names(case.config):
        np.testing.assert_array_equal(results[f"train_piece/{n}"], want[n])
    plain, _ = run_case(_case(), OracleAdapter(_case()))
    assert not any("_piece/" in k for k in plain)


class SteppingOracle(OracleAdapter):
    """OracleAdapter with the spec's SGD step; the model is a dict of tensors, updated in place."""

    def make_optimizer(self, model):
        return {}

    def train_step(self, model, optimizer, x, y):
        config = self.case.config
        _, _, g = reference.gradients(model, config, x, y, True)
        _, running = reference.forward_features(model, config, x, True)
        state, buffers = reference.sgd_step(model, g, optimizer, self.case.sgd)
        model.update({**state, **running})
        optimizer.update(buffers)


def test_driver_returns_each_sgd_steps_piece():
    case = make_case(
        get_preset("tiny"), image_size=16, steps=3, dtype="float32",
        quantities=("grad", "step"), options={"pieces": True},
    )  # fmt: skip
    results, _ = run_case(case, SteppingOracle(case))
    assert list(results) == result_keys(case)
    want, _ = reference.run_case(case)  # the oracle's own trajectory, recorded as it steps
    for k in result_keys(case):
        np.testing.assert_array_equal(results[k], want[k], err_msg=k)
    step_keys = [k for k in results if k.startswith("step_piece/")]
    assert len(step_keys) == 3 * len(relu_names(case.config))
    n = "blocks.0.layers.0.norm1"
    assert not np.array_equal(results[f"step_piece/0/{n}"], results[f"step_piece/2/{n}"])


def test_driver_names_missing_preactivations():
    case = _case(pieces=True)
    with pytest.raises(PiecesMissingError, match="preactivations=None.*pieces_unavailable"):
        run_case(case, OracleAdapter(case, report=False))

    class Partial(OracleAdapter):
        def gradients(self, model, x, y, training):
            g = super().gradients(model, x, y, training)
            g.preactivations.pop("head.norm")
            return g

    with pytest.raises(PiecesMissingError, match=r"missing \['head.norm'\]"):
        run_case(case, Partial(case))


def test_an_adapter_that_cannot_report_pieces_says_why():
    class Fused(OracleAdapter):
        pieces_unavailable = "fused BN+ReLU kernel never materialises the BN output"

    case = _case(pieces=True)
    results, info = run_case(case, Fused(case, report=False))
    assert info["pieces"] == Fused.pieces_unavailable
    assert not any("_piece/" in k for k in results)

    class FusedStepping(SteppingOracle):  # SGD steps only: no step pieces either
        pieces_unavailable = Fused.pieces_unavailable

    case = make_case(
        get_preset("tiny"), image_size=16, steps=2, dtype="float32", quantities=("step",),
        options={"pieces": True},
    )  # fmt: skip
    results, info = run_case(case, FusedStepping(case, report=False))
    assert info["pieces"] == Fused.pieces_unavailable
    assert list(results) == [k for k in result_keys(case) if "_piece/" not in k]
    assert any(k.startswith("step_piece/") for k in result_keys(case))  # what it was asked for


def test_grad_scale_scales_one_weight_gradient_and_nothing_else():
    case = _case()
    plain, _ = run_case(case, OracleAdapter(case))
    mutated_case = dataclasses.replace(case, options={"driver_mutate": "grad_scale"})
    mutated, _ = run_case(mutated_case, OracleAdapter(mutated_case))
    key = "train_grad/stem.conv.weight"
    np.testing.assert_array_equal(mutated[key], plain[key] * np.float32(1 + GRAD_SCALE))
    assert mutated[key].dtype == np.float32
    assert all(np.array_equal(mutated[k], plain[k]) for k in plain if k != key)
    with pytest.raises(ValueError, match="unknown driver mutation 'nope'"):
        bad = dataclasses.replace(case, options={"driver_mutate": "nope"})
        run_case(bad, OracleAdapter(bad))


def test_cli_accepts_grad_scale_only_with_gradients():
    from densenet_spec import cli
    from densenet_spec.errors import UsageError
    from densenet_spec.harness import MUTATIONS, expected_parts

    assert "grad_scale" in MUTATIONS
    args = cli.parse_args(["--preset", "tiny", "--mutate", "torch:grad_scale"])
    assert cli.prepare(args)[3] == {"torch": "grad_scale"}
    args = cli.parse_args(
        ["--preset", "tiny", "--mutate", "torch:grad_scale", "--quantities", "eval,train"]
    )
    with pytest.raises(UsageError, match="grad_scale changes a gradient"):
        cli.prepare(args)
    config = get_preset("densenet_bc_100")  # no max-pool stem: the first conv is still stem.conv
    assert expected_parts(config, "grad_scale") == {"train_grad": "stem.conv.weight"}
    assert expected_parts(config, "bn_eps", ("eval",)) == {"eval": "blocks.0.layers.0"}
