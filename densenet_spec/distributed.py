"""Entry point of a data-parallel parity case, inside one framework's environment (issue 20).

    <env python> -m densenet_spec.distributed <package> <case folder> <result file> [timeout s]

The protocol every framework implements, in <package>/distributed.py (torch's is the example):

    launch(case_dir, out, *, timeout: float) -> None
        Run the replica case in case_dir (densenet_spec.replicas: options replicas, bn_sync,
        buffers) on the framework's own data-parallel engine and write one results file at `out`
        (case.write_results) holding exactly replicas.result_keys(case) in the case's dtype, with
        a JSON info (engine, backend, replicas, bn_sync, device, versions). A multi-process
        engine starts its processes here (loopback only, bounded by `timeout`, every process
        killed on failure); a one-process engine (JAX sharding, tf.distribute over logical CPU
        devices, MXNet kvstore "device") computes in this process. Raise on failure.

This module checks the file afterwards (every key, float tensors) and exits 0; a DenseNetError
exits 2 with its message, anything else 1 with the traceback (as densenet_spec.worker).
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import time

DEFAULT_TIMEOUT_S = 600.0
KILL_GRACE_S = 5  # seconds between SIGTERM and SIGKILL
POLL_S = 0.2


# ---------------------------------------------------------------------------------------------
# Starting an engine's processes on this machine (every framework's launch uses these)


class ProcessFailed(RuntimeError):
    """A launched process exited non-zero (`code`: its exit status; 2 is a named refusal, its
    message on the process's stderr)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def free_ports(count: int = 1) -> list[int]:
    """`count` distinct TCP ports free on the loopback interface now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_processes(commands: list[tuple[list[str], dict]], timeout: float, what: str) -> None:
    """Start every (command, environment) in its own session and wait for all of them. The first
    non-zero exit raises ProcessFailed, `timeout` seconds raise TimeoutError; either, or an
    interrupt, kills every process group first (SIGTERM, then SIGKILL after KILL_GRACE_S)."""
    procs: list[subprocess.Popen] = []
    deadline = time.monotonic() + timeout
    try:
        for cmd, env in commands:
            procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i, code = failed[0]
                raise ProcessFailed(f"{what}: process {i} exited {code} ({len(procs)} ran)", code)
            if all(c == 0 for c in codes):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not done after {timeout:g} s")
            time.sleep(POLL_S)
    except BaseException:
        kill_groups(procs)
        raise


def kill_groups(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to every process's group (its own session), SIGKILL to what is left after
    KILL_GRACE_S."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        alive = [p for p in procs if p.poll() is None]
        for p in alive:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        for p in alive:
            try:
                p.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass


# ---------------------------------------------------------------------------------------------
# The worker entry point


def run(package: str, case_dir: str, out: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    from densenet_spec.case import read_case, read_results
    from densenet_spec.replicas import check_results

    case = read_case(case_dir)
    module = importlib.import_module(f"{package}.distributed")
    module.launch(case_dir, out, timeout=timeout)
    results, _ = read_results(out)
    check_results(case, results)
    not_float = [k for k, v in results.items() if v.dtype.kind != "f"]
    if not_float:
        raise ValueError(f"non-float results: {not_float[:8]}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    from densenet_spec.errors import exit_code

    return exit_code(run, *argv[:3], *(float(a) for a in argv[3:]))


if __name__ == "__main__":
    sys.exit(main())
