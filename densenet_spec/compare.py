"""Compare two result dicts key by key against the tolerance table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from densenet_spec.tolerances import (
    FLOAT32_FLOOR,
    FLOAT32_SAFETY,
    FLOAT32_SCALE_FLOOR,
    FLOAT64,
    GRAD_FLOOR,
    family,
    is_exact_zero,
)


@dataclass(frozen=True)
class Comparison:
    key: str
    error: float
    bound: float

    @property
    def ok(self) -> bool:
        return bool(self.error <= self.bound)


class DerivedErrors(dict):
    """The oracle's own float32 errors by key (what float32 bounds are derived from) and the
    measure they were taken in: `scales` maps each gradient key measured against its rounding
    scale (reference.gradient_scales, tolerances.py) to that scale; compare() measures the
    frameworks in the same units."""

    def __init__(self, errors: dict, scales: dict[str, float] | None = None):
        super().__init__(errors)
        self.scales = dict(scales or {})


def family_scales(reference: dict) -> dict[str, float]:
    scales: dict[str, float] = {}
    for k, v in reference.items():
        m = float(np.max(np.abs(v))) if np.size(v) else 0.0
        scales[family(k)] = max(scales.get(family(k), 0.0), m)
    return scales


def rel_errors(
    a: dict, b: dict, *, symmetric: bool = False, scales: dict | None = None
) -> dict[str, float]:
    """max|a-b| / max|b| per key common to both (b the reference).

    symmetric=True divides by max(max|a|, max|b|) instead, for framework pairs where neither is
    the reference. Exactly-zero keys divide by their family's largest value, other gradients by at
    least GRAD_FLOOR times it (tolerances.py). scales: key -> its rounding scale, what those keys
    divide by instead (float32 gradients, DerivedErrors.scales).
    """
    scales_k = scales or {}
    scales_b = family_scales(b)
    scales = (
        {f: max(s, family_scales(a).get(f, 0.0)) for f, s in scales_b.items()}
        if symmetric
        else scales_b
    )
    out = {}
    for k in b:
        if k not in a:
            continue
        x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
        if x.shape != y.shape:
            out[k] = float("inf")
            continue
        diff = float(np.max(np.abs(x - y))) if x.size else 0.0
        denom = scales_k.get(k) or _denominator(k, y, scales, x if symmetric else None)
        out[k] = diff / denom if denom > 0 else (0.0 if diff == 0 else float("inf"))
    return out


def _denominator(k: str, y: np.ndarray, scales: dict, x: np.ndarray | None = None) -> float:
    """What rel_errors divides key k's max|a - b| by (x: the other side, when symmetric)."""
    if is_exact_zero(k):
        return scales[family(k)]
    denom = float(np.max(np.abs(y))) if y.size else 0.0
    if x is not None:
        denom = max(denom, float(np.max(np.abs(x))) if x.size else 0.0)
    if family(k).endswith("_grad"):
        denom = max(denom, GRAD_FLOOR * scales[family(k)])
    return denom


def _carried(case) -> float:
    """lr * sum_k (1 - m^k) / (1 - m): how far case.steps momentum steps move a parameter per
    unit of a gradient error present at every step."""
    m = case.sgd.momentum
    return case.sgd.lr * sum(
        (1 - m ** (k + 1)) / (1 - m) if m != 1 else k + 1 for k in range(case.steps)
    )


def float32_step_allowance(case, reference: dict, float32_errors: dict) -> dict[str, float]:
    """Extra float32 bound for step/<p> where d loss / d p is exactly zero (tolerances.py)."""
    grads = {k: v for k, v in reference.items() if k.startswith("train_grad/")}
    if not grads or not case.steps:
        return {}
    largest = max(float(np.max(np.abs(v))) for v in grads.values())
    carried = _carried(case)
    out = {}
    for gkey in grads:
        if is_exact_zero(gkey):
            name = gkey.split("/", 1)[1]
            grad_bound = bounds_for([gkey], "float32", float32_errors)[gkey]
            scale = float(np.max(np.abs(reference.get(f"step/{name}", case.params[name]))))
            out[f"step/{name}"] = carried * grad_bound * largest / max(scale, 1e-30)
    return out


def add_allowances(*allowances: dict | None) -> dict[str, float]:
    """Sum allowance dicts key by key."""
    out: dict[str, float] = {}
    for a in allowances:
        for k, v in (a or {}).items():
            out[k] = out.get(k, 0.0) + v
    return out


def bounds_for(
    keys, dtype: str, float32_errors: dict | None = None, allowance: dict | None = None
) -> dict[str, float]:
    """The bound for each key: the float64 table, or the derived float32 bound.

    float32_errors: rel_errors(oracle in float32, oracle in float64) on the same case; needed for
    float32 (see tolerances.py for the derivation).
    """
    if dtype == "float64":
        return {k: FLOAT64[family(k)] for k in keys}
    if dtype != "float32":
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    if float32_errors is None:
        raise ValueError("float32 bounds are derived: pass the oracle's own float32 errors")
    allowance = allowance or {}
    scaled = getattr(float32_errors, "scales", {})
    return {
        k: max(
            FLOAT32_SCALE_FLOOR if k in scaled else FLOAT32_FLOOR[family(k)],
            FLOAT32_SAFETY * float32_errors.get(k, 0.0),
        )
        + allowance.get(k, 0.0)
        for k in keys
    }


def compare(
    a: dict,
    b: dict,
    dtype: str,
    float32_errors: dict | None = None,
    *,
    symmetric=False,
    allowance=None,
):
    """List of Comparison for every key of b (the reference); a missing key is an infinite error.
    float32: keys that float32_errors measured against their rounding scale are measured so."""
    scales = getattr(float32_errors, "scales", None) if dtype == "float32" else None
    errors = rel_errors(a, b, symmetric=symmetric, scales=scales)
    bounds = bounds_for(b.keys(), dtype, float32_errors, allowance)
    return [Comparison(k, errors.get(k, float("inf")), bounds[k]) for k in b]


def assert_close(
    a: dict,
    b: dict,
    dtype: str,
    float32_errors: dict | None = None,
    *,
    symmetric=False,
    allowance=None,
):
    """For tests: fail listing the worst offending keys with their error and bound.

    float32: pass allowance=float32_step_allowance(case, oracle64, float32_errors) when step keys
    are compared; compare train-mode gradients on the implementation's own linear piece
    (pieces.py), or add kinks.float32_kink_allowance (the fallback, tolerances.py)."""
    bad = [
        c
        for c in compare(a, b, dtype, float32_errors, symmetric=symmetric, allowance=allowance)
        if not c.ok
    ]
    if bad:
        bad.sort(key=lambda c: -c.error / c.bound)
        lines = [f"{c.key}: error {c.error:.3e} > bound {c.bound:.1e}" for c in bad[:15]]
        raise AssertionError(
            f"{len(bad)} of {len(b)} comparisons out of bound:\n" + "\n".join(lines)
        )
