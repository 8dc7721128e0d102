"""Entry point that runs one framework on one case, inside that framework's own environment.

    <env python> -m densenet_spec.worker <package> <case folder> <result file>

<package> is a framework's package (densenet_spec.frameworks: FRAMEWORKS[name].package), whose
adapter.Adapter the one driver (densenet_spec.driver) runs, or `numpy` for the oracle. The
results file is written atomically. A DenseNetError (bad input, missing device) exits 2 with its
message on stderr; anything else exits 1 with the traceback.
"""

from __future__ import annotations

import importlib
import platform
import sys
import time


def run(package: str, case_dir: str) -> tuple[dict, dict]:
    """(results, info) of one case: the oracle for `numpy`, else the package's adapter."""
    from densenet_spec.case import check_results, read_case

    case = read_case(case_dir)
    start = time.perf_counter()
    if package == "numpy":
        from densenet_spec import reference

        results, info = reference.run_case(case)
        check_results(case, results)
    else:
        from densenet_spec.driver import run_case

        adapter = importlib.import_module(f"{package}.adapter").Adapter(case)
        results, info = run_case(case, adapter)
    info = {
        "package": package,
        "python": platform.python_version(),
        "seconds": round(time.perf_counter() - start, 3),
        "variant": case.variant,
        **info,
    }
    return results, info


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    package, case_dir, out = argv
    from densenet_spec.case import write_results
    from densenet_spec.errors import exit_code

    def work() -> None:
        results, info = run(package, case_dir)
        write_results(out, results, info)

    return exit_code(work)


if __name__ == "__main__":
    sys.exit(main())
