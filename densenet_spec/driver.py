"""The one worker driver: what a parity case computes, in what order, for every framework.

A framework supplies an adapter (densenet_<name>/adapter.py, class Adapter) with the few things
that differ between frameworks; this module runs the eval / train / gradient / step loop once:

    adapter = Adapter(case)            applies the device and precision settings; adapter.info
    adapter.build()                    a model holding the case's weights, in its initial state
                                       (running statistics included), variant and mutation applied
    adapter.images(x), .labels(y)      NCHW NumPy -> native tensors on the case's device
    adapter.stage_outputs(model, x, training)
                                       every stage's output, native, keyed by stage name
    adapter.loss(logits, y)            mean cross-entropy, native scalar
    adapter.gradients(model, x, y, training)
                                       Gradients: input gradient (native), canonical parameter
                                       gradients (NumPy), loss; stage outputs when the adapter
                                       computes them in the same pass (else None); every
                                       BatchNorm's output of that pass (preactivations), which
                                       the "pieces" option requires (below)
    adapter.make_optimizer(model), adapter.train_step(model, optimizer, x, y)
    adapter.to_numpy(t)                native -> NumPy in the canonical layout (NCHW, (N, C))
    adapter.to_canonical(model)        canonical weights (NumPy) after the steps

Every quantity starts from a fresh build(), so running statistics never leak between quantities.

Linear pieces (float32 gradient parity, pieces.py). With case.options["pieces"] (the harness sets
it for float32 cases with gradients) Gradients.preactivations must hold, for every BatchNorm
(case.relu_names: "stem.norm", "blocks.0.layers.1.norm2", "transitions.0.norm", "head.norm"),
its output in that very forward pass: the tensor the ReLU after it consumed, native layout,
eval and train mode. The driver returns them as eval_piece/<bn>, train_piece/<bn> (NCHW). An
adapter that cannot (say why) sets the class attribute `pieces_unavailable = "<reason>"`: the
driver then returns no piece keys and info["pieces"] = the reason, and the harness falls back to
the ReLU-kink allowance (kinks.py) for that framework. preactivations=None without that reason
is a PiecesMissingError. With steps, the driver also returns step_piece/<k>/<bn>, each SGD step's
piece, from a train-mode gradients() on the state that step starts from (_step_pieces).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from densenet_spec.case import (
    Case,
    check_results,
    records_pieces,
    relu_names,
    result_keys,
    wants_pieces,
    wants_step_pieces,
    without_pieces,
)
from densenet_spec.errors import DenseNetError


@dataclass
class Gradients:
    loss: Any  # native scalar
    input: Any  # d loss / d x, native layout
    params: (
        dict[str, np.ndarray] | None
    )  # canonical name -> gradient (canonical layout); train only
    stages: dict[str, Any] | None = None  # stage outputs of the same forward pass, if computed
    # BatchNorm name -> its output in the same forward pass (the following ReLU's input), native
    preactivations: dict[str, Any] | None = None


class PiecesMissingError(DenseNetError, RuntimeError):
    """A "pieces" case, and the adapter's gradients() reported no (or not every) pre-activation."""


# Gradient-only mutations for the harness's self-check (--mutate FW:grad_scale), applied here, after
# the adapter's backward, so that every framework has them with no adapter code: the forward, the
# running statistics and the optimizer steps are untouched. grad_scale multiplies the first
# convolution's weight gradient by 1 + GRAD_SCALE: on d2l 2.5e-3 of that gradient's rounding scale
# (4x its value), 440x its float32 bound (5.6e-6 of the scale, tolerances.py), 10^7x the float64
# one, and far inside the old ReLU-kink allowance (its median on DenseNet-121 was 0.13), which could
# not have caught it.
DRIVER_MUTATIONS = {"grad_scale": "stem.conv.weight"}
GRAD_SCALE = 1e-2


class Adapter(Protocol):
    info: dict

    def build(self) -> Any: ...
    def images(self, x: np.ndarray) -> Any: ...
    def labels(self, y: np.ndarray) -> Any: ...
    def stage_outputs(self, model: Any, x: Any, training: bool) -> dict[str, Any]: ...
    def loss(self, logits: Any, y: Any) -> Any: ...
    def gradients(self, model: Any, x: Any, y: Any, training: bool) -> Gradients: ...
    def make_optimizer(self, model: Any) -> Any: ...
    def train_step(self, model: Any, optimizer: Any, x: Any, y: Any) -> Any: ...
    def to_numpy(self, t: Any) -> np.ndarray: ...
    def to_canonical(self, model: Any) -> dict[str, np.ndarray]: ...


def run_case(case: Case, adapter: Adapter) -> tuple[dict[str, np.ndarray], dict]:
    """Fill every key of result_keys(case) with `adapter`; return (results, adapter.info)."""
    reason = getattr(adapter, "pieces_unavailable", None)
    if records_pieces(case) and reason:
        adapter.info["pieces"] = str(reason)
        case = without_pieces(case)
    mutated = _driver_mutation(case)
    x, y = adapter.images(case.x), adapter.labels(case.y)
    results: dict[str, np.ndarray] = {}

    def record_stages(mode: str, stages: dict, loss) -> None:
        results.update({f"{mode}/{k}": adapter.to_numpy(v) for k, v in stages.items()})
        results[f"loss/{mode}"] = np.reshape(adapter.to_numpy(loss), (1,))

    for mode in ("eval", "train"):
        training = mode == "train"
        if "grad" in case.quantities:
            grads = adapter.gradients(adapter.build(), x, y, training)
            results[f"{mode}_grad/input"] = adapter.to_numpy(grads.input)
            if training:
                results.update({f"train_grad/{k}": np.asarray(g) for k, g in grads.params.items()})
                if mutated:
                    key = f"train_grad/{mutated}"
                    results[key] = results[key] * results[key].dtype.type(1 + GRAD_SCALE)
            if wants_pieces(case):
                pre = _preactivations(case, grads, mode)
                results.update({f"{mode}_piece/{k}": adapter.to_numpy(v) for k, v in pre.items()})
            if mode in case.quantities and grads.stages is not None:
                record_stages(mode, grads.stages, grads.loss)
                continue
        if mode in case.quantities:
            stages = adapter.stage_outputs(adapter.build(), x, training)
            record_stages(mode, stages, adapter.loss(stages["logits"], y))
    if "step" in case.quantities:
        model = adapter.build()
        optimizer = adapter.make_optimizer(model)
        for k in range(case.steps):
            xk, yk = adapter.images(case.step_x[k]), adapter.labels(case.step_y[k])
            adapter.train_step(model, optimizer, xk, yk)
        results.update({f"step/{k}": np.asarray(v) for k, v in adapter.to_canonical(model).items()})
    if wants_step_pieces(case):
        results.update(_step_pieces(case, adapter))
    results = {k: results[k] for k in result_keys(case) if k in results}
    check_results(case, results)
    return results, dict(adapter.info)


def _step_pieces(case: Case, adapter: Adapter) -> dict:
    """step_piece/<k>/<bn>: the piece of SGD step k's forward pass, from a train-mode gradients()
    on the state that step starts from (a fresh build and the k steps before it again, so the
    adapter needs nothing new: O(K^2) steps). That pass must take the piece train_step takes on
    the same state and batch, as for the train-mode gradients of step 0 (pieces.py)."""
    out = {}
    for k in range(case.steps):
        model = adapter.build()
        optimizer = adapter.make_optimizer(model)
        for j in range(k):
            xj, yj = adapter.images(case.step_x[j]), adapter.labels(case.step_y[j])
            adapter.train_step(model, optimizer, xj, yj)
        xk, yk = adapter.images(case.step_x[k]), adapter.labels(case.step_y[k])
        pre = _preactivations(case, adapter.gradients(model, xk, yk, True), f"step {k} train")
        out.update({f"step_piece/{k}/{n}": adapter.to_numpy(v) for n, v in pre.items()})
    return out


def _preactivations(case: Case, grads: Gradients, mode: str) -> dict:
    """grads.preactivations, checked: exactly one per BatchNorm."""
    pre = grads.preactivations
    if pre is None:
        raise PiecesMissingError(
            f"this case asks for linear pieces (float32 gradients), but the adapter's {mode}-mode "
            "gradients() returned preactivations=None: return every BatchNorm's output of that "
            "forward pass, or set Adapter.pieces_unavailable = '<reason>' (densenet_spec.driver)"
        )
    want = relu_names(case.config)
    missing = [n for n in want if n not in pre]
    extra = [n for n in pre if n not in want]
    if missing or extra:
        raise PiecesMissingError(
            f"{mode}-mode preactivations: missing {missing[:6]}, unexpected {extra[:6]} "
            f"(want the {len(want)} BatchNorm names of case.relu_names)"
        )
    return {n: pre[n] for n in want}


def _driver_mutation(case: Case) -> str | None:
    """The parameter whose gradient the self-check's driver mutation scales, or None."""
    kind = case.options.get("driver_mutate")
    if kind is None:
        return None
    if kind not in DRIVER_MUTATIONS:
        raise ValueError(f"unknown driver mutation {kind!r}; known: {', '.join(DRIVER_MUTATIONS)}")
    if "grad" not in case.quantities:
        raise ValueError(f"driver mutation {kind} changes a gradient: the case computes none")
    return DRIVER_MUTATIONS[kind]
