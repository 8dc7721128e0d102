"""The float32 ReLU-kink allowance: the fallback for a framework that cannot report its linear
piece (pieces.py), e.g. one whose fused kernels never materialise the BatchNorm output.

Float32 train-mode gradients are discontinuous at ReLU kinks; without the implementation's piece
the best one can do is bound what flipping any near-kink entry could change (tolerances.py,
"The ReLU-kink fallback"). That bound is honest but loose (median 0.13 relative on DenseNet-121,
64 px): the harness uses it only for a framework whose adapter sets pieces_unavailable, and says
so in the report.
"""

from __future__ import annotations

import numpy as np

from densenet_spec.compare import _carried, _denominator, family_scales
from densenet_spec.tolerances import FLOAT32_SAFETY


def _kink_inputs(case):
    """Each train-mode ReLU's input in float64 and its kink threshold: FLOAT32_SAFETY x the
    oracle's own float32 error (max-abs) of that input on this case (tolerances.py)."""
    from densenet_spec import reference

    x = np.asarray(case.x)
    p64 = {k: np.asarray(v, np.float64) for k, v in case.params.items()}
    p32 = {k: np.asarray(v, np.float32) for k, v in case.params.items()}
    y64 = reference.relu_inputs(p64, case.config, x.astype(np.float64))
    y32 = reference.relu_inputs(p32, case.config, x.astype(np.float32))
    thresholds = {
        n: FLOAT32_SAFETY * float(np.max(np.abs(y32[n].astype(np.float64) - v)))
        for n, v in y64.items()
    }
    return y64, thresholds, p64


def kink_thresholds(case) -> dict[str, float]:
    """Per ReLU (named by its BatchNorm): how close to 0 a train-mode input must be for a float32
    implementation's rounding to flip its mask (tolerances.py)."""
    return _kink_inputs(case)[1]


def float32_kink_allowance(
    case, reference: dict, thresholds: dict | None = None, scales: dict | None = None
) -> dict[str, float]:
    """Extra float32 bound for train_grad/<p> and step/<p> from ReLU masks rounding can flip.

    reference: the float64 oracle's results on case (its train_grad keys are the truth).
    thresholds: ReLU name -> t (default kink_thresholds(case)). Entries of a train-mode ReLU input
    with |y| < t are near-kink. The float64 oracle's gradients are recomputed twice, with every
    near-kink derivative forced to 1 and then to 0; a key's allowance is
    max(|g_on - g| + |g_off - g|) / (its rel_errors denominator: scales[key], the rounding
    scale, where given), and step/<p> gets it carried like float32_step_allowance. Empty when
    no entry is near a kink.
    """
    from densenet_spec import reference as oracle

    grads = {
        k.split("/", 1)[1]: np.asarray(v, np.float64)
        for k, v in reference.items()
        if k.startswith("train_grad/")
    }
    if not grads:
        return {}
    y64, derived, p64 = _kink_inputs(case)
    thresholds = derived if thresholds is None else thresholds
    if not any(np.any(np.abs(y64[n]) < t) for n, t in thresholds.items() if t > 0):
        return {}
    x64, y = np.asarray(case.x, np.float64), np.asarray(case.y)
    change = {n: np.zeros(g.shape) for n, g in grads.items()}
    for forced in (1, 0):
        _, grad_x, variant = oracle.gradients(
            p64, case.config, x64, y, True, kink_threshold=thresholds, kink_derivative=forced
        )
        variant["input"] = grad_x  # train_grad/input
        for n, g in grads.items():
            change[n] += np.abs(variant[n] - g)
    family = family_scales({f"train_grad/{n}": g for n, g in grads.items()})
    carried = _carried(case)
    out = {}
    for n, c in change.items():
        a = float(np.max(c)) if c.size else 0.0
        if a == 0:
            continue
        key = f"train_grad/{n}"
        out[key] = a / ((scales or {}).get(key) or _denominator(key, grads[n], family))
        if case.steps and n in case.params:
            scale = float(np.max(np.abs(reference.get(f"step/{n}", case.params[n]))))
            out[f"step/{n}"] = carried * a / max(scale, 1e-30)
    return out
