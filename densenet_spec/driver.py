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
                                       computes them in the same pass (else None)
    adapter.make_optimizer(model), adapter.train_step(model, optimizer, x, y)
    adapter.to_numpy(t)                native -> NumPy in the canonical layout (NCHW, (N, C))
    adapter.to_canonical(model)        canonical weights (NumPy) after the steps

Every quantity starts from a fresh build(), so running statistics never leak between quantities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from densenet_spec.case import Case, check_results, result_keys


@dataclass
class Gradients:
    loss: Any  # native scalar
    input: Any  # d loss / d x, native layout
    params: dict[str, np.ndarray] | None  # canonical name -> gradient (canonical layout); train only
    stages: dict[str, Any] | None = None  # stage outputs of the same forward pass, if computed


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
    results = {k: results[k] for k in result_keys(case) if k in results}
    check_results(case, results)
    return results, dict(adapter.info)
