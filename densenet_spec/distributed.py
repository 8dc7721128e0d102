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
import sys
import traceback

DEFAULT_TIMEOUT_S = 600.0


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
    from densenet_spec.errors import DenseNetError

    try:
        run(*argv[:3], *(float(a) for a in argv[3:]))
    except DenseNetError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
