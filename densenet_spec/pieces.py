"""Float32 gradients compared on the implementation's own linear piece.

A DenseNet is piecewise linear in everything that ReLU and max-pool decide: the gradient is the
derivative of the linear piece the forward pass took. Every ReLU follows a BatchNorm, and in
float32 some BatchNorm outputs lie within rounding of 0 (DenseNet-121, 64 px, batch 2: dozens of
the 1.2M train-mode entries are within 1e-4 of 0), so two correct float32 implementations take
different pieces in a few entries, and one flipped entry can move a gradient by far more than
rounding (tolerances.py). So the parity check asks each implementation which piece it took:

- the worker reports, with its gradients, every BatchNorm's output of the same forward pass
  (eval_piece/<bn>, train_piece/<bn>: driver.py, case.result_keys);
- the piece is read off those values: ReLU masks pre > 0 (every framework's ReLU takes the
  derivative 0 at exactly 0) and the stem max-pool's choice, the first maximum in row-major
  order of each 3x3/2 window of relu(pre["stem.norm"]), which is what every framework's pool
  routes its gradient to. Ties at 0 do not matter: a window whose maximum is 0 holds only
  entries with pre <= 0, whose ReLU masks are 0, so whichever one (or padding) gets the gradient,
  it stops there. Ties between equal positive float32 values are the one assumption (first
  maximum; a framework taking another would fail loudly, not pass);
- the float64 oracle recomputes the gradient on exactly that piece (reference.gradients with
  relu_masks and pool_choice: forward unchanged, backward through the given masks), and the
  float32 gradients are compared with it; the float32 bound is the oracle's own float32 rounding
  on its own piece (float32_errors), with no allowance for kinks.

Step keys: the worker reports the piece of every SGD step's forward too (step_piece/<k>/<bn>:
driver._step_pieces), and the float64 trajectory is recomputed with step k on that piece
(_trajectory_on), so the float32 bound on step/ keys is rounding alone over all K steps. A result
without step pieces (older workers) gets the earlier rule: the first step takes the train-mode
gradient's piece (make_case uses the same batch), later ones the float64 oracle's own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from densenet_spec import reference
from densenet_spec.case import Case, as_dtype, relu_names, wants_step_pieces
from densenet_spec.compare import DerivedErrors, rel_errors
from densenet_spec.tolerances import is_exact_zero

MODES = ("eval", "train")


@dataclass(frozen=True)
class Piece:
    """The linear piece of one forward pass: every ReLU's mask and the stem max-pool's choice."""

    masks: dict[str, np.ndarray]  # BatchNorm name -> bool, shaped like its output
    pool: np.ndarray | None  # stem max-pool: chosen index 0..8 per window; None without one

    def same_as(self, other: Piece) -> bool:
        return not any(differences(self, other).values())


def piece_of(pre: dict[str, np.ndarray], config) -> Piece:
    """The piece a forward pass took, from its BatchNorm outputs (NCHW, in its own dtype)."""
    masks = {n: np.asarray(pre[n]) > 0 for n in relu_names(config)}
    pool = None
    if config.stem == "imagenet":
        stem = np.asarray(pre["stem.norm"])
        pool = reference.max_pool_choice(np.maximum(stem, stem.dtype.type(0)))
    return Piece(masks, pool)


def pieces_of(results: dict, config) -> dict:
    """{"eval": Piece, "train": Piece} from a worker's eval_piece/<bn>, train_piece/<bn> keys,
    and "steps": [Piece of step 0, 1, ...] where it reported step_piece/<k>/<bn>."""
    names = relu_names(config)
    out: dict = {
        mode: piece_of({n: results[f"{mode}_piece/{n}"] for n in names}, config)
        for mode in MODES
        if f"{mode}_piece/{names[0]}" in results
    }
    steps = sorted({int(k.split("/")[1]) for k in results if k.startswith("step_piece/")})
    if steps:
        out["steps"] = [
            piece_of({n: results[f"step_piece/{k}/{n}"] for n in names}, config) for k in steps
        ]
    return out


def differences(a: Piece, b: Piece) -> dict[str, int]:
    """How many entries sit on different pieces: per BatchNorm name (its ReLU) and "pool"
    (windows whose max-pool choice differs); only the nonzero ones."""
    out = {n: int(np.count_nonzero(m != b.masks[n])) for n, m in a.masks.items()}
    if a.pool is not None and b.pool is not None:
        out["pool"] = int(np.count_nonzero(a.pool != b.pool))
    return {k: v for k, v in out.items() if v}


def summary(a: dict, b: dict) -> dict:
    """Per mode (and "steps", summed over the SGD steps, where both have them): ReLU entries and
    pool windows on a different piece, and where (JSON-ready)."""
    out = {}
    for mode in (m for m in MODES if m in a and m in b):
        diff = differences(a[mode], b[mode])
        pool = diff.pop("pool", 0)
        out[mode] = {"relu": sum(diff.values()), "pool": pool, "where": diff}
    if "steps" in a and "steps" in b:
        where: dict[str, int] = {}
        for pa, pb in zip(a["steps"], b["steps"]):
            for n, count in differences(pa, pb).items():
                where[n] = where.get(n, 0) + count
        pool = where.pop("pool", 0)
        out["steps"] = {"relu": sum(where.values()), "pool": pool, "where": where}
    return out


def oracle_pieces(case64: Case) -> dict:
    """The float64 oracle's own pieces on the case (its truth), its SGD steps' too where the case
    asks for them."""
    x, config = np.asarray(case64.x), case64.config
    out: dict = {
        mode: piece_of(reference.relu_inputs(case64.params, config, x, mode == "train"), config)
        for mode in MODES
    }
    if wants_step_pieces(case64):
        relu: list = []
        reference.sgd_steps(
            case64.params, config, case64.step_x, case64.step_y, case64.sgd, relu=relu
        )
        out["steps"] = [piece_of(pre, config) for pre in relu]
    return out


def on_piece(case: Case, pieces: dict, truth: dict, own: dict) -> dict:
    """The float64 oracle's gradient keys (and step keys) on `pieces`; other keys of truth as
    they are. own: the oracle's own pieces, for which truth already holds the answer. With
    pieces["steps"] the whole SGD trajectory takes those (step/ and step_piece/ keys); without,
    its first step takes the train-mode gradient's piece and later ones the oracle's own."""
    case64 = as_dtype(case, "float64")
    config, x, y = case64.config, np.asarray(case64.x), np.asarray(case64.y)
    out = dict(truth)
    for mode in (m for m in MODES if m in pieces):
        if pieces[mode].same_as(own[mode]):
            continue
        _, grad_x, grads = reference.gradients(
            case64.params,
            config,
            x,
            y,
            mode == "train",
            relu_masks=pieces[mode].masks,
            pool_choice=pieces[mode].pool,
        )
        out[f"{mode}_grad/input"] = grad_x
        if mode == "train":
            out.update({f"train_grad/{n}": g for n, g in grads.items()})
            if "step" in case.quantities and case.steps and "steps" not in pieces:
                out.update(_steps_from(case64, grads))
    if "steps" in pieces and not all(p.same_as(o) for p, o in zip(pieces["steps"], own["steps"])):
        out.update(_trajectory_on(case64, pieces["steps"]))
    return out


def _trajectory_on(case64: Case, steps: list[Piece]) -> dict:
    """step/<name> and step_piece/<k>/<bn> of the float64 SGD trajectory whose step k takes
    steps[k] (the piece that implementation's step k took)."""
    relu: list = []
    state, _, _ = reference.sgd_steps(
        case64.params,
        case64.config,
        case64.step_x,
        case64.step_y,
        case64.sgd,
        pieces=[(p.masks, p.pool) for p in steps],
        relu=relu,
    )
    out = {f"step/{n}": state[n] for n in case64.params}
    for k, pre in enumerate(relu):
        out.update({f"step_piece/{k}/{n}": v for n, v in pre.items()})
    return out


def _steps_from(case64: Case, grads: dict) -> dict:
    """step/<name> of the float64 SGD trajectory whose first step takes `grads` (the train-mode
    gradient on case.x); later steps take the oracle's own pieces."""
    if not (
        np.array_equal(case64.step_x[0], case64.x) and np.array_equal(case64.step_y[0], case64.y)
    ):
        return {}  # the first step is on another batch: its piece is not reported
    params, config = case64.params, case64.config
    _, running = reference.forward_features(params, config, np.asarray(case64.x), True)
    state, buffers = reference.sgd_step(params, grads, None, case64.sgd)
    state.update(running)
    if case64.steps > 1:
        state, buffers, _ = reference.sgd_steps(
            state, config, case64.step_x[1:], case64.step_y[1:], case64.sgd, buffers=buffers
        )
    return {f"step/{n}": state[n] for n in params}


def rounding_scales(case: Case) -> dict[str, float]:
    """Gradient key -> its rounding scale: the largest entry of reference.gradient_scales (the
    sum of |terms| of its last sum) on the float64 oracle's own pieces. Float32 gradient errors
    are measured against it (tolerances.py); exactly-zero keys keep their own rule."""
    case64 = as_dtype(case, "float64")
    x, y = np.asarray(case64.x), np.asarray(case64.y)
    out = {}
    for mode in MODES:
        scale_x, scales = reference.gradient_scales(
            case64.params, case64.config, x, y, mode == "train"
        )
        found = {f"{mode}_grad/input": scale_x}
        if mode == "train":
            found.update({f"train_grad/{n}": s for n, s in scales.items()})
        out.update({k: float(np.max(s)) for k, s in found.items() if not is_exact_zero(k)})
    return {k: s for k, s in out.items() if s > 0}


def float32_errors(case: Case, truth: dict, own: dict[str, Piece]) -> tuple[DerivedErrors, dict]:
    """(rel_errors of the oracle's own float32 run, its pieces): against the float64 oracle on
    the float32 oracle's own pieces, so the errors are rounding alone, never a flipped kink;
    gradients measured against their rounding scale (rounding_scales). The float32 bounds are
    derived from these (tolerances.py). truth: the float64 oracle's results with piece keys."""
    case32 = dataclasses.replace(case, options={**case.options, "pieces": True})
    ours32, _ = reference.run_case(case32)
    pieces32 = pieces_of(ours32, case.config)
    ref = on_piece(case, pieces32, truth, own)
    scales = rounding_scales(case)
    return DerivedErrors(rel_errors(ours32, ref, scales=scales), scales), pieces32
