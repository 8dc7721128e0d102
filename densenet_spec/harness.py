"""The cross-framework parity run: one case, every framework in its own environment, the oracle.

Each framework's worker runs as a subprocess of that framework's environment's Python and answers
with a results file; nothing here imports a framework. An export target (frameworks.EXPORT_TARGETS:
onnx) runs like a framework, in the environment of the framework it is exported from, for the
quantities it can do (check_targets refuses the others before anything runs). Every framework is
compared with the NumPy oracle and with every other framework (pairwise); a framework that fails
to run is reported with the tail of its stderr while the others are still compared.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import platform
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import densenet_envs as envs
from densenet_spec import pieces, reference, replicas
from densenet_spec.case import (
    Case,
    as_dtype,
    check_results,
    describe_inputs,
    make_case,
    read_results,
    result_keys,
    without_pieces,
    write_case,
)
from densenet_spec.compare import (
    Comparison,
    add_allowances,
    compare,
    float32_step_allowance,
    rel_errors,
)
from densenet_spec.driver import DRIVER_MUTATIONS
from densenet_spec.errors import DenseNetError, WorkerResultError
from densenet_spec.frameworks import EXPORT_TARGETS, get_target, worker_framework
from densenet_spec.kinks import float32_kink_allowance
from densenet_spec.params import stage_names, trainable_names
from densenet_spec.tolerances import family

ORACLE = "oracle"
WORKER_TIMEOUT_S = 1800  # seconds; densenet-parity --worker-timeout
KILL_GRACE_S = 5  # after SIGTERM, a worker's process group gets this long before SIGKILL


class Terminated(BaseException):
    """SIGTERM (or SIGHUP) arrived: raised in the main thread so that it unwinds like Ctrl-C
    (KeyboardInterrupt), through the same cleanup: workers killed, temp folder removed."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def terminate_as_interrupt(signals=(signal.SIGTERM, signal.SIGHUP)):
    """While inside, SIGTERM and SIGHUP raise Terminated (main thread only; elsewhere a no-op)."""

    def handler(signum, frame):
        raise Terminated(signum)

    previous = {}
    try:
        for s in signals:
            previous[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread: signals cannot be handled here
        pass
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# Deliberate perturbations for the self-check: a parity harness that cannot fail proves nothing.
# bn_eps: the framework builds its BatchNorms with eps 1e-3 (Keras's default) instead of the spec's.
# same_padding: its stem conv 7x7/2 and max-pool 3x3/2 use TF/XLA 'same' padding, which pads
#               (2, 3) and (0, 1) on even inputs instead of (3, 3) and (1, 1): the d2l JAX/TF tabs.
# grad_scale: its first conv's weight gradient is scaled by 1 + 1e-2 (driver.GRAD_SCALE), the
#               forward and the optimizer steps untouched: a gradient-only bug the float32 check
#               must catch too (it could not with the old ReLU-kink allowance).
MUTATIONS = ("bn_eps", "same_padding", "grad_scale")
# With --replicas only (replicas.py): bn_sync runs the other BatchNorm semantics than asked for.
REPLICA_MUTATIONS = ("bn_sync",)


@dataclass
class FrameworkRun:
    name: str
    ok: bool
    info: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    error: str = ""  # why it did not run: the worker's stderr tail, or the setup error


@dataclass
class PairReport:
    a: str
    b: str  # ORACLE or a framework; b is the reference when it is the oracle
    comparisons: list[Comparison]
    stages: list = field(default_factory=list, repr=False)  # forward order, for first_divergence
    params: list = field(default_factory=list, repr=False)
    # float32 gradients: where a's and b's linear pieces differ (pieces.summary), or
    # {"reported": False, "reason": ...} when one of them could not report its piece
    pieces: dict | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.comparisons)

    def first_divergence(self) -> dict[str, str]:
        """Where the pair parts: the first failing forward stage (in forward order) and, for
        gradients, the last failing parameter in forward order (the first one backward reaches)."""
        failing = {c.key for c in self.comparisons if not c.ok}
        out = {}
        for mode in ("eval", "train"):
            hit = next((s for s in self.stages if f"{mode}/{s}" in failing), None)
            if hit:
                out[mode] = hit
        grads = [n for n in self.params if f"train_grad/{n}" in failing]
        if grads:
            out["train_grad"] = grads[-1]
        if not out:  # no stage or gradient parts: name the first failing key of what does
            for c in self.comparisons:
                fam, _, name = c.key.partition("/")
                if not c.ok and fam not in out:
                    out[fam] = name
        return out


@dataclass
class ParityReport:
    case: Case
    runs: dict[str, FrameworkRun]
    pairs: list[PairReport]
    oracle_seconds: float
    command: str = ""
    mutations: dict = field(default_factory=dict)
    pieces: dict = field(default_factory=dict)  # framework -> PairReport.pieces against the oracle
    piece_seconds: dict = field(default_factory=dict)  # framework -> oracle recomputation (s)
    weights: dict = field(default_factory=dict)  # --weights: file, format, config; {}: random
    # float32 gradients: key -> (rounding scale, largest |value|) of the float64 oracle
    rounding_scales: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.runs.values()) and all(p.ok for p in self.pairs)

    def to_json(self) -> dict:
        c = self.case
        return {
            "ok": self.ok,
            "command": self.command,
            "case": {
                "config": c.config.to_dict(),
                "dtype": c.dtype,
                "device": c.device,
                "batch": int(c.x.shape[0]),
                "image_size": list(c.x.shape[2:]),
                "steps": c.steps,
                "inputs": describe_inputs(c),  # --data: real batches
                "sgd": vars(c.sgd),
                "quantities": list(c.quantities),
                "tf32": c.options.get("tf32", "off"),  # densenet-parity --tf32
            },
            "frameworks": {
                n: {
                    "ok": r.ok,
                    "info": r.info,
                    "error": r.error,
                    "pieces": self.pieces.get(n),
                    "oracle_piece_seconds": self.piece_seconds.get(n),
                }
                for n, r in self.runs.items()
            },
            "weights": self.weights,
            "oracle_seconds": round(self.oracle_seconds, 3),
            "mutations": self.mutations,
            "notes": report_notes(self),
            "rounding_scales": {k: list(v) for k, v in self.rounding_scales.items()},
            "pairs": [
                {
                    "a": p.a,
                    "b": p.b,
                    "ok": p.ok,
                    "first_divergence": p.first_divergence(),
                    "pieces": p.pieces,
                    "comparisons": [
                        {"key": x.key, "error": x.error, "bound": x.bound, "ok": x.ok}
                        for x in p.comparisons
                    ],
                }
                for p in self.pairs
            ],
        }


def worker_command(
    framework: str,
    case_dir: Path,
    out: Path,
    setup: bool,
    log,
    *,
    pythons: dict | None = None,
    device: str = "cpu",
    module: str = "densenet_spec.worker",
) -> tuple[list, dict]:
    """(command, environment) that runs `framework`'s worker on case_dir, answering in `out`;
    an export target's worker runs in the environment of the framework it is exported from.

    pythons: --python FRAMEWORK=PATH overrides (densenet_envs.python_for: an interpreter named
    there or by DENSENET_PYTHON_<FRAMEWORK>, else the project's environment for `device`).
    module: densenet_spec.worker, or densenet_spec.distributed for a replica case."""
    runs_in = worker_framework(framework)
    python = envs.python_for(runs_in, pythons, setup=setup, log=log, device=device)
    package = get_target(framework).package
    cmd = [str(python), "-m", module, package, str(case_dir), str(out)]
    return cmd, envs.worker_env(runs_in, parity=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop a worker and everything it started: SIGTERM to its process group, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_process(cmd, env, timeout: float) -> tuple[int, str]:
    """(return code, stderr) of a worker run in its own session (process group), so that a
    timeout, Ctrl-C or SIGTERM here kills it with everything it started; re-raises those."""
    with tempfile.TemporaryFile() as err:  # a file: a chatty worker cannot fill a pipe
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout)
        except BaseException:
            _kill_group(proc)
            raise
        err.seek(0)
        return code, err.read().decode(errors="replace")


def exit_description(code: int) -> str:
    """'exited 1' or, for a worker a signal ended, 'killed by SIGSEGV'."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited {code}"


def read_worker_results(path: Path, case: Case | None = None) -> tuple[dict, dict]:
    """A worker's results, checked: present, readable, numeric, and (with case) every key."""
    if not Path(path).is_file():
        raise WorkerResultError("it wrote no result file")
    try:
        results, info = read_results(path)
    except Exception as e:  # safetensors' own errors, bad JSON in the metadata
        raise WorkerResultError(
            f"its result file is unreadable ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(info, dict):
        raise WorkerResultError(f"its result info is not a JSON object: {info!r}")
    if case is not None:
        if info.get("pieces"):  # the adapter could not report its piece (driver.py): says why
            case = without_pieces(case)
        check = replicas.check_results if is_replica_case(case) else check_results
        try:
            check(case, results)
        except ValueError as e:
            raise WorkerResultError(f"its results are incomplete: {e}") from None
    not_float = sorted(k for k, v in results.items() if v.dtype.kind != "f")
    if not_float:
        raise WorkerResultError(f"its results hold non-float tensors: {', '.join(not_float[:8])}")
    return results, info


def run_worker(
    framework: str,
    case_dir: Path,
    setup: bool = True,
    log=print,
    *,
    timeout: float = WORKER_TIMEOUT_S,
    case: Case | None = None,
    pythons: dict | None = None,
) -> FrameworkRun:
    """Run one framework's worker in its own environment (or the interpreter `pythons` names for
    it); never raises for a worker failure (Ctrl-C and Terminated are re-raised after the worker
    is killed). A run's info records which interpreter ran it ("interpreter"). A replica case
    (replicas.py) runs the framework's data-parallel worker (densenet_spec.distributed), which
    bounds its own processes by `timeout`."""
    out = case_dir.parent / f"result-{framework}.safetensors"
    device = case.device if case is not None else "cpu"
    distributed = case is not None and is_replica_case(case)
    module = "densenet_spec.distributed" if distributed else "densenet_spec.worker"
    try:
        cmd, env = worker_command(
            framework, case_dir, out, setup, log, pythons=pythons, device=device, module=module
        )
    except Exception as e:  # a broken environment is reported, the other frameworks still run
        return FrameworkRun(framework, False, error=str(e))
    if distributed:
        cmd, timeout = cmd + [str(timeout)], timeout + 2 * KILL_GRACE_S
    try:
        code, stderr = run_process(cmd, env, timeout)
    except subprocess.TimeoutExpired:
        return FrameworkRun(
            framework, False, error=f"worker timed out after {timeout:g} s (--worker-timeout)"
        )
    except OSError as e:  # the interpreter could not be started
        return FrameworkRun(framework, False, error=f"worker could not start: {e}")
    tail = "\n".join(stderr.strip().splitlines()[-15:])
    if code != 0:
        return FrameworkRun(framework, False, error=f"worker {exit_description(code)}:\n{tail}")
    try:
        results, info = read_worker_results(out, case)
    except WorkerResultError as e:
        return FrameworkRun(framework, False, error=f"worker exited 0 but {e}\n{tail}".strip())
    info["interpreter"] = interpreter_info(framework, pythons, device)
    return FrameworkRun(framework, True, info=info, results=results)


def interpreter_info(framework: str, pythons: dict | None, device: str) -> dict:
    """Which Python ran `framework`'s worker (densenet_envs.describe_python), for the report."""
    try:
        return envs.describe_python(worker_framework(framework), pythons, device=device)
    except DenseNetError as e:  # it ran, so this is only the description failing
        return {"error": str(e)}


@dataclass
class OracleResults:
    """The oracle's side of a parity run.

    truth: the float64 oracle on its own linear pieces (with eval_piece/train_piece keys when the
    case asks for pieces); float32_errors: its own float32 run against the float64 oracle on the
    float32 run's pieces: rounding alone, from which float32 bounds are derived (tolerances.py);
    pieces: the float64 oracle's own pieces (float32 gradient cases).
    """

    case: Case
    truth: dict
    float32_errors: dict | None
    seconds: float
    pieces: dict | None = None
    pieces32: dict | None = None
    _kinks: dict | None = field(default=None, repr=False)

    def kinks(self) -> dict:
        """The ReLU-kink allowance (kinks.py), computed once, for frameworks without pieces."""
        if self._kinks is None:
            start = time.perf_counter()
            scales = getattr(self.float32_errors, "scales", None)
            self._kinks = float32_kink_allowance(self.case, self.truth, scales=scales)
            self.seconds += time.perf_counter() - start
        return self._kinks

    def on_piece(self, results: dict) -> dict:
        """The float64 reference for a worker that reported its pieces: truth, with gradient and
        step keys recomputed on those pieces."""
        fw = pieces.pieces_of(results, self.case.config)
        return pieces.on_piece(self.case, fw, self.truth, self.pieces)


def uses_pieces(case: Case) -> bool:
    """float32 gradients and SGD steps are compared on each implementation's own linear pieces
    (pieces.py)."""
    q = case.quantities
    return case.dtype == "float32" and ("grad" in q or ("step" in q and case.steps > 0))


def with_pieces(case: Case) -> Case:
    import dataclasses

    if not uses_pieces(case) or case.options.get("pieces"):
        return case
    return dataclasses.replace(case, options={**case.options, "pieces": True})


def oracle_results(case: Case) -> OracleResults:
    """The oracle in float64 (the truth) and, for float32 cases, the oracle's own float32 errors
    (on its own pieces, for gradient cases), from which float32 bounds are derived."""
    start = time.perf_counter()
    case = with_pieces(case)
    case64 = as_dtype(case, "float64")
    truth, _ = reference.run_case(case64)
    out = OracleResults(case, truth, None, 0.0)
    if case.dtype == "float32":
        if uses_pieces(case):
            out.pieces = pieces.oracle_pieces(case64)
            out.float32_errors, out.pieces32 = pieces.float32_errors(case, truth, out.pieces)
        else:
            ours32, _ = reference.run_case(case)
            out.float32_errors = rel_errors(ours32, truth)
    out.seconds = time.perf_counter() - start
    return out


def mutated(case: Case, kind: str) -> Case:
    """The case one framework sees under --mutate framework:kind."""
    import dataclasses

    if kind == "bn_eps":
        return dataclasses.replace(case, config=case.config.replace(bn_eps=1e-3))
    if kind == "same_padding":
        return dataclasses.replace(case, options={**case.options, "mutate": "same_padding"})
    if kind in DRIVER_MUTATIONS:  # applied by the driver, not the adapter
        return dataclasses.replace(case, options={**case.options, "driver_mutate": kind})
    if kind in REPLICA_MUTATIONS:  # the other BatchNorm semantics than the replica case asks for
        return replicas.mutation_case(case)
    raise ValueError(f"unknown mutation {kind!r}; known: {', '.join(MUTATIONS)}")


def expected_parts(config, kind: str, quantities=("eval", "train", "grad")) -> dict[str, str]:
    """Where a mutation must make the report part (PairReport.first_divergence), and nothing
    else: the first forward stage for the forward mutations, the mutated tensor for grad_scale."""
    if kind in DRIVER_MUTATIONS:
        if "grad" not in quantities:
            raise ValueError(f"{kind} changes a gradient: add grad to the quantities")
        return {"train_grad": DRIVER_MUTATIONS[kind]}
    if kind in REPLICA_MUTATIONS:  # the other BN semantics: train mode parts at the first BN
        if "train" not in quantities:
            raise ValueError(f"{kind} changes train-mode BatchNorm: add train to the quantities")
        return {"train": expected_divergence(config, "bn_eps")}
    stage = expected_divergence(config, kind)
    return {mode: stage for mode in ("eval", "train") if mode in quantities}


def expected_divergence(config, kind: str) -> str:
    """The first forward stage a forward mutation must change."""
    if kind == "same_padding":
        if config.stem != "imagenet":
            raise ValueError("same_padding changes the strided ImageNet stem; this config has none")
        return "stem"
    # bn_eps: the first BatchNorm is in the ImageNet stem, else in the first dense layer
    return "stem" if config.stem == "imagenet" else "blocks.0.layers.0"


def self_check(report: ParityReport) -> list[str]:
    """Problems with a --mutate run: mutated pairs must fail where expected, others pass."""
    problems = []
    for p in report.pairs:
        hit = [fw for fw in (p.a, p.b) if fw in report.mutations]
        if not hit:
            if not p.ok:
                problems.append(f"{p.a} vs {p.b} failed although neither was mutated")
            continue
        if len(hit) == 2:
            continue  # two mutated frameworks may or may not agree with each other
        kind = report.mutations[hit[0]]
        want = expected_parts(report.case.config, kind, report.case.quantities)
        got = p.first_divergence()
        if kind in DRIVER_MUTATIONS:  # gradient-only: that tensor fails, nothing else
            if got != want:
                problems.append(
                    f"{p.a} vs {p.b}: mutation {kind} of {hit[0]} should fail exactly {want}, "
                    f"the report says {got}"
                )
            continue
        for mode, stage in want.items():
            if got.get(mode) != stage:
                problems.append(
                    f"{p.a} vs {p.b}: mutation {kind} of {hit[0]} should part "
                    f"at {stage} in {mode} mode, the report says {got.get(mode)}"
                )
    for fw in report.mutations:
        if not report.runs[fw].ok:
            problems.append(f"mutated {fw} did not run: {report.runs[fw].error}")
    return problems


def _shift(a: dict, ref_a: dict, ref_b: dict) -> dict:
    """a moved onto b's linear piece through the oracle: a + (ref_b - ref_a) wherever the two
    references differ (gradient and step keys whose pieces differ); other keys as they are."""
    out = dict(a)
    for k, v in ref_b.items():
        if k in a and ref_a.get(k) is not v:
            out[k] = np.asarray(a[k], np.float64) + (v - ref_a[k])
    return out


def check_targets(names, quantities, dtype: str, device: str, mutations: dict | None = None):
    """ExportTargetError (named, before anything runs) where an export target among `names` is
    asked for what it cannot do: a quantity, dtype or device, or a mutation it does not honour."""
    from densenet_convert.errors import ExportTargetError

    for name in names:
        target = EXPORT_TARGETS.get(name)
        if target is None:
            continue
        problems = target.cannot_run(quantities, dtype, device)
        kind = (mutations or {}).get(name)
        if kind is not None and kind not in target.mutations:
            honoured = ", ".join(target.mutations) or "none"
            problems.append(f"--mutate {name}:{kind} (it honours: {honoured})")
        if problems:
            hints = []
            if any(p.startswith("quantities") for p in problems):
                hints.append(f"--quantities {','.join(target.quantities)}")
            if dtype not in target.dtypes:
                hints.append(f"--dtype {target.dtypes[0]}")
            hint = f" (give {' '.join(hints)})" if hints else ""
            raise ExportTargetError(f"{name} cannot run {'; '.join(problems)}{hint}: {target.why}")


def run_parity(
    case: Case,
    frameworks,
    *,
    workdir: Path | None = None,
    setup: bool = True,
    log=print,
    command: str = "",
    mutations: dict[str, str] | None = None,
    worker_timeout: float = WORKER_TIMEOUT_S,
    weights: dict | None = None,
    pythons: dict | None = None,
) -> ParityReport:
    """Every framework (and export target) on `case`, compared with the oracle and pairwise.

    weights: where the case's parameters came from (densenet-parity --weights), for the report;
    pythons: --python FRAMEWORK=PATH interpreters (densenet_envs.python_for)."""
    frameworks = list(dict.fromkeys(frameworks))
    for f in frameworks:
        get_target(f)  # UnknownFrameworkError names the known ones
    check_timeout(worker_timeout)
    mutations = mutations or {}
    check_targets(frameworks, case.quantities, case.dtype, case.device, mutations)
    case = with_pieces(case)
    what = f"worker ({case.dtype}, {case.device}, {case.variant} model)"
    runs = run_workers(
        case, frameworks, mutations, what, workdir, setup, log, worker_timeout, pythons
    )
    report = evaluate(case, runs, log=log, command=command, mutations=mutations)
    report.weights = dict(weights or {})
    return report


def run_workers(
    case: Case, frameworks, mutations: dict, what: str, workdir, setup, log, timeout, pythons
) -> dict[str, FrameworkRun]:
    """Every framework's worker on `case` (a framework under --mutate on mutated(case)), each in
    its own environment; the case folders live in `workdir`, else in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="densenet-parity-") as tmp:
        root = Path(workdir or tmp)
        case_dir = write_case(case, root / "case")
        runs = {}
        for fw in frameworks:
            fw_dir = case_dir
            if fw in mutations:
                log(f"MUTATING {fw}: {mutations[fw]} (self-check: this run must fail)")
                fw_dir = write_case(mutated(case, mutations[fw]), root / f"case-{fw}")
            log(f"running {fw} {what}")
            runs[fw] = run_worker(
                fw, fw_dir, setup, log, timeout=timeout, case=case, pythons=pythons
            )
            status = f"done in {runs[fw].info.get('seconds', '?')} s" if runs[fw].ok else "FAILED"
            log(f"{fw}: {status}")
    return runs


def evaluate(
    case: Case, runs: dict[str, FrameworkRun], *, log=print, command: str = "", mutations=None
) -> ParityReport:
    """Compare finished worker runs with the oracle (on each framework's own linear piece, for
    float32 gradients) and with each other."""
    case, mutations, frameworks = with_pieces(case), mutations or {}, list(runs)
    log("running the NumPy oracle")
    oracle = oracle_results(case)
    truth, float32_errors = oracle.truth, oracle.float32_errors
    stages, params = stage_names(case.config), trainable_names(case.config)
    truth = {k: truth[k] for k in result_keys(case)}
    step = float32_step_allowance(case, truth, float32_errors) if float32_errors else None
    ok = [f for f in frameworks if runs[f].ok]
    refs, fw_pieces, summaries, seconds = {}, {}, {}, {}
    for fw in ok:
        reason = runs[fw].info.get("pieces")
        if not uses_pieces(case):
            refs[fw] = truth
        elif reason:
            refs[fw] = {k: v for k, v in truth.items() if "_piece/" not in k}
            summaries[fw] = {"reported": False, "reason": str(reason)}
        else:
            log(f"oracle: float64 gradients on {fw}'s linear pieces")
            start = time.perf_counter()
            fw_pieces[fw] = pieces.pieces_of(runs[fw].results, case.config)
            refs[fw] = pieces.on_piece(case, fw_pieces[fw], truth, oracle.pieces)
            seconds[fw] = round(time.perf_counter() - start, 3)
            summaries[fw] = {"reported": True, **pieces.summary(fw_pieces[fw], oracle.pieces)}

    def allowance(*fws) -> dict | None:
        if any(fw in summaries and fw not in fw_pieces for fw in fws):
            return add_allowances(step, oracle.kinks())  # the documented fallback (kinks.py)
        return step

    pairs = []
    for fw in ok:
        comps = compare(
            runs[fw].results, refs[fw], case.dtype, float32_errors, allowance=allowance(fw)
        )
        pairs.append(PairReport(fw, ORACLE, comps, stages, params, summaries.get(fw)))
    for a, b in itertools.combinations(ok, 2):
        ra, rb, note = runs[a].results, runs[b].results, None
        if a in fw_pieces and b in fw_pieces:
            ra = _shift(ra, refs[a], refs[b])
            note = {"reported": True, **pieces.summary(fw_pieces[a], fw_pieces[b])}
        elif a in summaries or b in summaries:  # one could not report its piece: fallback
            ra, rb = ({k: v for k, v in r.items() if "_piece/" not in k} for r in (ra, rb))
            note = {
                "reported": False,
                "reason": "; ".join(
                    f"{fw}: {summaries[fw]['reason']}"
                    for fw in (a, b)
                    if fw in summaries and fw not in fw_pieces
                ),
            }
        comps = compare(
            ra, rb, case.dtype, float32_errors, symmetric=True, allowance=allowance(a, b)
        )
        pairs.append(PairReport(a, b, comps, stages, params, note))
    oracle_s = oracle.seconds + sum(seconds.values())
    report = ParityReport(case, runs, pairs, oracle_s, command, dict(mutations), summaries, seconds)
    scales = getattr(float32_errors, "scales", {})
    report.rounding_scales = {
        k: (s, float(np.max(np.abs(truth[k])))) for k, s in scales.items() if k in truth
    }
    return report


def check_timeout(seconds) -> float:
    """A worker timeout: a finite number of seconds > 0."""
    ok = isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
    if not ok or not math.isfinite(seconds) or seconds <= 0:
        raise DenseNetError(
            f"worker timeout must be a finite number of seconds > 0, got {seconds!r}"
        )
    return float(seconds)


def default_image_size(config) -> int:
    """The d2l chapter trains on 96x96; other presets use a size that keeps the oracle quick."""
    if config.stem == "cifar":
        return 32
    return 96 if config.in_channels == 1 else 64


def family_table(report: ParityReport) -> list[dict]:
    """One row per (pair, quantity family): worst error, its key, the bound, pass/fail."""
    rows = []
    for p in report.pairs:
        by_family: dict[str, list[Comparison]] = {}
        for c in p.comparisons:
            by_family.setdefault(family(c.key), []).append(c)
        for fam, comps in by_family.items():
            worst = max(comps, key=lambda c: c.error / c.bound if c.bound else np.inf)
            rows.append(
                {
                    "pair": f"{p.a} vs {p.b}",
                    "quantity": fam,
                    "error": worst.error,
                    "bound": worst.bound,
                    "worst_key": worst.key,
                    "n": len(comps),
                    "failed": sum(not c.ok for c in comps),
                }
            )
    return rows


def piece_rows(report: ParityReport) -> list[dict]:
    """One row per framework (against the oracle's float64 piece) and per framework pair: how many
    ReLU entries (eval, train) and stem max-pool windows sit on a different linear piece, and
    where (steps: both, over every SGD step, where reported; "" where not); or why a framework
    could not say (it is then checked with the ReLU-kink fallback)."""
    rows = []
    for p in report.pairs:
        if p.pieces is None:
            continue
        row = {"pair": f"{p.a} vs {p.b}", "reported": p.pieces.get("reported", False)}
        if row["reported"]:
            where: dict[str, int] = {}
            for mode in ("eval", "train", "steps"):
                for name, n in p.pieces.get(mode, {}).get("where", {}).items():
                    where[name] = where.get(name, 0) + n
            count = {m: p.pieces[m]["relu"] for m in ("eval", "train") if m in p.pieces}
            pool = [p.pieces[m]["pool"] for m in ("eval", "train") if m in p.pieces]
            steps = p.pieces.get("steps")
            row |= {
                "eval": count.get("eval", ""),
                "train": count.get("train", ""),
                "pool": sum(pool) if pool else "",
                "steps": steps["relu"] + steps["pool"] if steps else "",
                "where": where,
            }
        else:
            row["reason"] = p.pieces.get("reason", "")
        rows.append(row)
    return rows


# A float32 step bound above this says little: a relative error of 1% is not rounding any more.
WIDE_STEP_BOUND = 1e-2


def float32_steps_note(report: ParityReport) -> str:
    """float32 over K > 1 steps: where the derived step bounds have grown too wide to check much
    (rounding compounds over the steps where a case is ill-conditioned, e.g. a train-mode
    BatchNorm that sees 2 values per channel; benchmarks/float32_steps), or ""."""
    c = report.case
    if c.dtype != "float32" or c.steps < 2:
        return ""
    steps = [x for p in report.pairs for x in p.comparisons if x.key.startswith("step/")]
    wide = [x for x in steps if x.bound > WIDE_STEP_BOUND]
    if not wide:
        return ""
    widest = max(wide, key=lambda x: x.bound)
    return (
        f"float32 over {c.steps} steps: {len(wide)} of {len(steps)} step bounds exceed "
        f"{WIDE_STEP_BOUND:g} (widest {widest.bound:.1e}, {widest.key}): the oracle's own float32 "
        "run has drifted that far from float64 on its own linear pieces (rounding compounds over "
        "the steps of an ill-conditioned case), so these comparisons check little; fewer --steps "
        "or more values per BatchNorm channel keep them tight (benchmarks/float32_steps)"
    )


def float32_gradients_note(report: ParityReport) -> str:
    """float32 gradients: the unit their errors and bounds are in (tolerances.py), or ""."""
    scales = report.rounding_scales
    if not scales:
        return ""
    grads = [x for p in report.pairs for x in p.comparisons if x.key in scales]
    widest = max(grads, key=lambda x: x.bound)
    key = max(scales, key=lambda k: scales[k][0] / max(scales[k][1], 1e-300))
    ratio = scales[key][0] / max(scales[key][1], 1e-300)
    return (
        f"float32 gradients ({len(scales)} tensors) are measured against their rounding scale, "
        "the sum of |terms| of each gradient's last sum, not against their value "
        f"(tolerances.py); widest bound {widest.bound:.1e} ({widest.key}). Where terms cancel "
        f"the value is smaller than its scale: {key} by {ratio:.3g}x"
    )


def report_notes(report: ParityReport) -> list[str]:
    """What a reader needs to read the numbers right (the terminal report, parity.md, json)."""
    return [n for n in (float32_gradients_note(report), float32_steps_note(report)) if n]


def describe_where(where: dict[str, int], limit: int = 4) -> str:
    """'blocks.1.layers.11.norm1 (1), ... (+3 more)': the BatchNorms whose ReLUs differ."""
    names = sorted(where, key=lambda n: -where[n])
    shown = ", ".join(f"{n} ({where[n]})" for n in names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def environment_summary() -> dict:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
    }


# ----------------------------------------------------------------------------------------
# Data-parallel parity (--replicas N, issue 20): each framework's distributed worker
# (densenet_spec.distributed) against the oracle's replica semantics (densenet_spec.replicas).


def is_replica_case(case: Case) -> bool:
    return int(case.options.get("replicas", 1)) > 1


def run_replica_parity(
    case: Case,
    frameworks,
    *,
    workdir: Path | None = None,
    setup: bool = True,
    log=print,
    command: str = "",
    mutations: dict[str, str] | None = None,
    worker_timeout: float = WORKER_TIMEOUT_S,
    weights: dict | None = None,
    pythons: dict | None = None,
) -> ParityReport:
    """A replica case (replicas.replica_case) on every framework's data-parallel engine, compared
    with replicas.oracle and pairwise: float64 within the ordinary bounds, float32 within bounds
    derived from the oracle's own float32 replica run (replicas.float32_errors)."""
    replicas.replica_options(case)
    mutations = mutations or {}
    what = f"on {case.options['replicas']} replicas ({case.options['bn_sync']})"
    runs = run_workers(
        case, frameworks, mutations, what, workdir, setup, log, worker_timeout, pythons
    )
    log("running the NumPy oracle (replica semantics)")
    start = time.perf_counter()
    truth = replicas.oracle(case)
    errors32 = replicas.float32_errors(case, truth) if case.dtype == "float32" else None
    step = float32_step_allowance(case, truth, errors32) if errors32 else None
    seconds = time.perf_counter() - start
    stages, params = stage_names(case.config), trainable_names(case.config)
    ok = [f for f in frameworks if runs[f].ok]
    pairs = [
        PairReport(
            fw,
            ORACLE,
            compare(runs[fw].results, truth, case.dtype, errors32, allowance=step),
            stages,
            params,
        )
        for fw in ok
    ]
    for a, b in itertools.combinations(ok, 2):
        ra, rb = runs[a].results, runs[b].results
        comps = compare(ra, rb, case.dtype, errors32, symmetric=True, allowance=step)
        pairs.append(PairReport(a, b, comps, stages, params))
    report = ParityReport(case, runs, pairs, seconds, command, dict(mutations))
    report.weights = dict(weights or {})  # --weights: where the parameters came from
    return report


__all__ = [
    "run_parity",
    "make_case",
    "ParityReport",
    "FrameworkRun",
    "family_table",
    "report_notes",
    "default_image_size",
]
