"""Data-parallel parity (issue 20): what an R-replica step must compute, and the comparison.

A replica case is an ordinary parity case (case.py) with three options:

    "replicas": R            the batch splits into R equal contiguous shards, replica r the r-th
    "bn_sync": "synchronised" | "per-replica"
                             BatchNorm statistics over the whole batch (an all-reduce), or each
                             replica's own shard (reference.py explains both, with the gradient)
    "buffers": "broadcast" | "local"
                             what each replica's running statistics start a step from: replica
                             0's (torch DDP's default broadcast_buffers=True) or its own
    "processes": bool        one process per replica (every engine's multi-process form: torch
                             always, JAX jax.distributed, TF MultiWorkerMirroredStrategy, MXNet
                             dist_sync) instead of one process over R devices (the default)

The BN semantics are a case option, not a DenseNetConfig field, for now: the config describes
one model on one device, and every framework's teaching files read it; data parallelism is
machinery around them (docs/data_parallel.md). The oracle implements both semantics
(reference.replica_forward_backward, reference.replica_sgd_steps).

A framework's data-parallel worker (its package's distributed.py, started by
`python -m densenet_spec.distributed`) answers with the keys of result_keys(case):

    eval/<stage>, loss/eval      eval mode, each replica on its shard, shards concatenated
    train/<stage>, loss/train    train mode likewise; loss = mean of the replicas' shard losses
    train_grad/input             d L_dp / d x: each replica's input gradient divided by R
    train_grad/<param>           the all-reduced gradient (what the engine leaves on replica 0)
    step/<name>                  replica 0's state after case.steps data-parallel SGD steps
    step/replica<r>/<running>    replica r's running statistics after them (r = 1 .. R-1)

Gradient-free replica mutation for the harness's self-check: "bn_sync" makes the framework run
the other BN semantics than the case asks for (mutation_case).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from densenet_spec import reference
from densenet_spec.case import Case
from densenet_spec.errors import UsageError
from densenet_spec.params import param_specs, stage_names, trainable_names

BN_SYNC = reference.BN_SYNC
BUFFER_POLICIES = reference.BUFFER_POLICIES
QUANTITIES = ("eval", "train", "grad", "step")  # eval_grad and float32 pieces: not yet


def replica_options(case: Case) -> tuple[int, str, str]:
    """(replicas, bn_sync, buffers) of a replica case, checked."""
    o = case.options
    replicas, bn_sync = int(o.get("replicas", 1)), o.get("bn_sync", "synchronised")
    buffers = o.get("buffers", "broadcast")
    if (
        replicas < 1
        or len(case.x) % replicas
        or len(case.step_y[0] if case.steps else case.y) % replicas
    ):
        raise UsageError(
            f"--replicas {replicas}: the batch of {len(case.x)} must split into equal shards "
            "(unequal shards weight samples differently: reference.py)"
        )
    if bn_sync not in BN_SYNC:
        raise UsageError(f"--bn-sync {bn_sync!r}: one of {', '.join(BN_SYNC)}")
    if buffers not in BUFFER_POLICIES:
        raise UsageError(f"buffers {buffers!r}: one of {', '.join(BUFFER_POLICIES)}")
    if not isinstance(o.get("processes", False), bool):
        raise UsageError(f"processes {o['processes']!r}: true or false")
    return replicas, bn_sync, buffers


def replica_case(
    case: Case, replicas: int, bn_sync: str, buffers: str = "broadcast", processes: bool = False
) -> Case:
    """`case` as an R-replica case; quantities outside QUANTITIES are dropped."""
    options = {**case.options, "replicas": replicas, "bn_sync": bn_sync, "buffers": buffers}
    if processes:
        options["processes"] = True
    quantities = tuple(q for q in case.quantities if q in QUANTITIES)
    out = dataclasses.replace(case, options=options, quantities=quantities)
    replica_options(out)
    return out


def mutation_case(case: Case) -> Case:
    """The self-check's "bn_sync" mutation: the other BN semantics than the case asks for."""
    _, bn_sync, _ = replica_options(case)
    other = BN_SYNC[1 - BN_SYNC.index(bn_sync)]
    return dataclasses.replace(case, options={**case.options, "bn_sync": other})


def running_names(config) -> list[str]:
    return [s.name for s in param_specs(config) if s.kind in ("bn_running_mean", "bn_running_var")]


def result_keys(case: Case) -> list[str]:
    """Every key a data-parallel worker returns for this case (module docstring)."""
    c, q = case.config, case.quantities
    replicas, _, _ = replica_options(case)
    keys: list[str] = []
    for mode in ("eval", "train"):
        if mode in q:
            keys += [f"{mode}/{s}" for s in stage_names(c)] + [f"loss/{mode}"]
    if "grad" in q:
        keys += ["train_grad/input"] + [f"train_grad/{n}" for n in trainable_names(c)]
    if "step" in q:
        keys += [f"step/{s.name}" for s in param_specs(c)]
        keys += [f"step/replica{r}/{n}" for r in range(1, replicas) for n in running_names(c)]
    return keys


def check_results(case: Case, results: dict) -> None:
    want = result_keys(case)
    missing = [k for k in want if k not in results]
    extra = [k for k in results if k not in want]
    if missing or extra:
        raise ValueError(f"replica results: missing {missing[:8]}..., unexpected {extra[:8]}")


def oracle(case: Case, dtype: str = "float64") -> dict[str, np.ndarray]:
    """The oracle's answer to a replica case (every key of result_keys), computed in `dtype`:
    float64 is the truth; float32 on a float32 case is the oracle's own rounding, from which
    float32 bounds are derived (float32_errors)."""
    replicas, bn_sync, buffers = replica_options(case)
    c, q = case.config, case.quantities
    params = {k: np.asarray(v, dtype) for k, v in case.params.items()}
    x, y = np.asarray(case.x, dtype), np.asarray(case.y)
    out: dict[str, np.ndarray] = {}
    for mode, training in (("eval", False), ("train", True)):
        if mode in q or (training and "grad" in q):
            features, _, value, grad_x, grads = reference.replica_forward_backward(
                params, c, x, y, replicas, bn_sync, training
            )
            if mode in q:
                out.update({f"{mode}/{s}": v for s, v in features.items()})
                out[f"loss/{mode}"] = np.reshape(value, (1,))
            if training and "grad" in q:
                out["train_grad/input"] = grad_x
                out.update({f"train_grad/{n}": g for n, g in grads.items()})
    if "step" in q:
        step_x = np.asarray(case.step_x, dtype)
        states = reference.replica_sgd_steps(
            params, c, step_x, case.step_y, case.sgd, replicas, bn_sync, buffers
        )
        out.update({f"step/{s.name}": states[0][s.name] for s in param_specs(c)})
        for r in range(1, replicas):
            out.update({f"step/replica{r}/{n}": states[r][n] for n in running_names(c)})
    return {k: np.ascontiguousarray(out[k], dtype) for k in result_keys(case)}


def float32_errors(case: Case, truth: dict) -> dict[str, float]:
    """The oracle's own float32 rounding on this replica case: its float32 run against the
    float64 truth, per key (tolerances.py derives each float32 bound from it). Replica workers
    do not report their linear pieces (pieces.py), so a ReLU mask that float32 rounding flips in
    one implementation shows as a gradient over its bound, named, not hidden by an allowance."""
    from densenet_spec.case import as_dtype
    from densenet_spec.compare import rel_errors

    return rel_errors(oracle(as_dtype(case, "float32"), "float32"), truth)
