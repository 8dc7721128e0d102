"""Entry point that runs one framework on one case, inside that framework's own environment.

    <env python> -m densenet_spec.worker <framework> <case folder> <result file>

It imports densenet_<framework>.worker, whose run_case(case) -> (results, info) does the work,
and writes the results file atomically. A DenseNetError (bad input, missing device) exits 2 with
its message on stderr; anything else exits 1 with the traceback.
"""

from __future__ import annotations

import importlib
import platform
import sys
import time
import traceback

PACKAGES = {"torch": "densenet_torch", "jax": "densenet_jax", "tf": "densenet_tf", "mx": "densenet_mx"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    framework, case_dir, out = argv
    from densenet_spec.case import check_results, read_case, write_results
    from densenet_spec.errors import DenseNetError

    try:
        case = read_case(case_dir)
        start = time.perf_counter()
        if framework == "numpy":
            from densenet_spec import reference as module
        else:
            module = importlib.import_module(f"{PACKAGES[framework]}.worker")
        results, info = module.run_case(case)
        info = {
            "framework": framework,
            "python": platform.python_version(),
            "seconds": round(time.perf_counter() - start, 3),
            **info,
        }
        check_results(case, results)
        write_results(out, results, info)
    except DenseNetError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
