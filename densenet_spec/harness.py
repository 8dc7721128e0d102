"""The cross-framework parity run: one case, every framework in its own environment, the oracle.

Each framework's worker runs as a subprocess of that framework's environment's Python and answers
with a results file; nothing here imports a framework. Every framework is compared with the NumPy
oracle and with every other framework (pairwise); a framework that fails to run is reported with the
tail of its stderr while the others are still compared.
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
from densenet_spec import reference
from densenet_spec.case import (
    Case,
    as_dtype,
    check_results,
    make_case,
    read_results,
    result_keys,
    write_case,
)
from densenet_spec.compare import (
    Comparison,
    add_allowances,
    compare,
    float32_kink_allowance,
    float32_step_allowance,
    rel_errors,
)
from densenet_spec.errors import DenseNetError, EnvironmentSetupError, WorkerResultError
from densenet_spec.frameworks import FRAMEWORKS, get_framework
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
MUTATIONS = ("bn_eps", "same_padding")


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
                "sgd": vars(c.sgd),
                "quantities": list(c.quantities),
            },
            "frameworks": {
                n: {"ok": r.ok, "info": r.info, "error": r.error} for n, r in self.runs.items()
            },
            "oracle_seconds": round(self.oracle_seconds, 3),
            "mutations": self.mutations,
            "pairs": [
                {
                    "a": p.a,
                    "b": p.b,
                    "ok": p.ok,
                    "first_divergence": p.first_divergence(),
                    "comparisons": [
                        {"key": x.key, "error": x.error, "bound": x.bound, "ok": x.ok}
                        for x in p.comparisons
                    ],
                }
                for p in self.pairs
            ],
        }


def worker_command(
    framework: str, case_dir: Path, out: Path, setup: bool, log
) -> tuple[list, dict]:
    """(command, environment) that runs `framework`'s worker on case_dir, answering in `out`."""
    python = envs.ensure_env(framework, log) if setup else envs.env_python(framework)
    if not Path(python).exists():
        raise EnvironmentSetupError(f"no {framework} environment at {python}")
    package = FRAMEWORKS[framework].package
    cmd = [str(python), "-m", "densenet_spec.worker", package, str(case_dir), str(out)]
    return cmd, envs.worker_env(framework, parity=True)


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
        try:
            check_results(case, results)
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
) -> FrameworkRun:
    """Run one framework's worker in its own environment; never raises for a worker failure
    (Ctrl-C and Terminated are re-raised after the worker is killed)."""
    out = case_dir.parent / f"result-{framework}.safetensors"
    try:
        cmd, env = worker_command(framework, case_dir, out, setup, log)
    except Exception as e:  # a broken environment is reported, the other frameworks still run
        return FrameworkRun(framework, False, error=str(e))
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
    return FrameworkRun(framework, True, info=info, results=results)


def oracle_results(case: Case) -> tuple[dict, dict | None, dict | None, float]:
    """The oracle in float64 (the truth) and, for float32 cases, the oracle's own float32 errors,
    from which float32 bounds are derived, and the ReLU-kink allowance (tolerances.py)."""
    start = time.perf_counter()
    case64 = as_dtype(case, "float64")
    truth, _ = reference.run_case(case64)
    float32_errors = kinks = None
    if case.dtype == "float32":
        ours32, _ = reference.run_case(case)
        float32_errors = rel_errors(ours32, truth)
        kinks = float32_kink_allowance(case, truth)
    return truth, float32_errors, kinks, time.perf_counter() - start


def mutated(case: Case, kind: str) -> Case:
    """The case one framework sees under --mutate framework:kind."""
    import dataclasses

    if kind == "bn_eps":
        return dataclasses.replace(case, config=case.config.replace(bn_eps=1e-3))
    if kind == "same_padding":
        return dataclasses.replace(case, options={**case.options, "mutate": "same_padding"})
    raise ValueError(f"unknown mutation {kind!r}; known: {', '.join(MUTATIONS)}")


def expected_divergence(config, kind: str) -> str:
    """The first forward stage a mutation must change."""
    if kind == "same_padding":
        if config.stem != "imagenet":
            raise ValueError("same_padding changes the strided ImageNet stem; this config has none")
        return "stem"
    # bn_eps: the first BatchNorm is in the ImageNet stem, else in the first dense layer
    return "stem" if config.stem == "imagenet" else "blocks.0.layers.0"


def self_check(report: ParityReport) -> list[str]:
    """Problems with a --mutate run: mutated pairs must fail at the expected stage, others pass."""
    problems = []
    for p in report.pairs:
        hit = [fw for fw in (p.a, p.b) if fw in report.mutations]
        if not hit:
            if not p.ok:
                problems.append(f"{p.a} vs {p.b} failed although neither was mutated")
            continue
        if len(hit) == 2:
            continue  # two mutated frameworks may or may not agree with each other
        want = expected_divergence(report.case.config, report.mutations[hit[0]])
        got = p.first_divergence()
        for mode in ("eval", "train"):
            if mode in report.case.quantities and got.get(mode) != want:
                problems.append(
                    f"{p.a} vs {p.b}: mutation {report.mutations[hit[0]]} of {hit[0]} should part "
                    f"at {want} in {mode} mode, the report says {got.get(mode)}"
                )
    for fw in report.mutations:
        if not report.runs[fw].ok:
            problems.append(f"mutated {fw} did not run: {report.runs[fw].error}")
    return problems


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
) -> ParityReport:
    frameworks = list(dict.fromkeys(frameworks))
    for f in frameworks:
        get_framework(f)  # UnknownFrameworkError names the known ones
    check_timeout(worker_timeout)
    mutations = mutations or {}
    with tempfile.TemporaryDirectory(prefix="densenet-parity-") as tmp:
        case_dir = write_case(case, Path(workdir or tmp) / "case")
        runs = {}
        for fw in frameworks:
            fw_dir = case_dir
            if fw in mutations:
                log(f"MUTATING {fw}: {mutations[fw]} (self-check: this run must fail)")
                fw_dir = write_case(
                    mutated(case, mutations[fw]), Path(workdir or tmp) / f"case-{fw}"
                )
            log(f"running {fw} worker ({case.dtype}, {case.device}, {case.variant} model)")
            runs[fw] = run_worker(fw, fw_dir, setup, log, timeout=worker_timeout, case=case)
            status = f"done in {runs[fw].info.get('seconds', '?')} s" if runs[fw].ok else "FAILED"
            log(f"{fw}: {status}")
    log("running the NumPy oracle")
    truth, float32_errors, kinks, oracle_s = oracle_results(case)
    stages, params = stage_names(case.config), trainable_names(case.config)
    keys = result_keys(case)
    truth = {k: truth[k] for k in keys}
    allowance = None
    if float32_errors:
        allowance = add_allowances(float32_step_allowance(case, truth, float32_errors), kinks)
    pairs = []
    for fw, run in runs.items():
        if run.ok:
            comps = compare(run.results, truth, case.dtype, float32_errors, allowance=allowance)
            pairs.append(PairReport(fw, ORACLE, comps, stages, params))
    for a, b in itertools.combinations([f for f in frameworks if runs[f].ok], 2):
        comps = compare(
            runs[a].results,
            runs[b].results,
            case.dtype,
            float32_errors,
            symmetric=True,
            allowance=allowance,
        )
        pairs.append(PairReport(a, b, comps, stages, params))
    return ParityReport(case, runs, pairs, oracle_s, command, dict(mutations))


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


def environment_summary() -> dict:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
    }


__all__ = [
    "run_parity",
    "make_case",
    "ParityReport",
    "FrameworkRun",
    "family_table",
    "default_image_size",
]
