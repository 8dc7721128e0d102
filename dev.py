#!/usr/bin/env python3
"""Set up and run the project with nothing but Python 3.11 and pip.

    python3 dev.py parity [densenet-parity options]   build the environments, run the parity report
    python3 dev.py test [pytest options]              build the environments, run the whole suite
    python3 dev.py bench [densenet-bench options]     build the environments, run the benchmarks
    python3 dev.py train [densenet-train options]     build the environments, train on real data
    python3 dev.py teach [densenet-teach options]     parity runs, then the side-by-side page
    python3 dev.py envs [spec torch jax tf mx]        only build (or reuse) environments
    python3 dev.py kernels [torch jax tf mx]          register a Jupyter kernel per framework

Each framework gets its own virtual environment under .venvs/ (MXNet 1.9.1 needs numpy<1.24, JAX and
TensorFlow need numpy 2), created from requirements/<name>.txt and reused until that file changes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import densenet_envs as envs  # noqa: E402  (standard library only)
from densenet_envs import browser  # noqa: E402
from densenet_spec.frameworks import FRAMEWORKS  # noqa: E402  (standard library only)

# Which environment runs which tests: framework tests import their framework, the spec and
# cross-framework tests run in the framework-free spec environment and start workers.
SUITES = {"spec": ["tests/spec", "tests/parity"]} | {
    f.requirements: [f.tests] for f in FRAMEWORKS.values()
}


def _run(python, args, env_name):
    return subprocess.call([str(python), *args], cwd=ROOT, env=envs.worker_env(env_name))


def parity(argv) -> int:
    python = envs.ensure_env("spec")
    if not argv:
        argv = ["--preset", "d2l", "--report", "reports/d2l"]
    frameworks = list(FRAMEWORKS)
    for i, a in enumerate(argv):
        if a == "--frameworks" and i + 1 < len(argv):
            frameworks = [f for f in argv[i + 1].split(",") if f in FRAMEWORKS]
        elif a.startswith("--frameworks="):
            frameworks = [f for f in a.split("=", 1)[1].split(",") if f in FRAMEWORKS]
    envs.ensure_envs(frameworks)
    return _run(python, ["-m", "densenet_spec.cli", *argv], "spec")


def bench(argv) -> int:
    python = envs.ensure_env("spec")
    return _run(python, ["-m", "densenet_bench.cli", *argv], "spec")


def train(argv) -> int:
    python = envs.ensure_env("spec")
    return _run(python, ["-m", "densenet_spec.train_cli", *argv], "spec")


def teach(argv) -> int:
    """Parity runs (float64, float32) of d2l and tiny (which has the bottleneck layer), then the
    side-by-side page in reports/teach/index.html."""
    python = envs.ensure_env("spec")
    envs.ensure_envs(FRAMEWORKS)
    runs = ROOT / "reports" / "teach-runs"
    runs.mkdir(parents=True, exist_ok=True)
    jsons = []
    for preset in ("d2l", "tiny"):
        for dtype in ("float64", "float32"):
            path = runs / f"parity-{preset}-{dtype}.json"
            # a failing run still writes its JSON; the page shows what failed
            _run(
                python,
                [
                    "-m",
                    "densenet_spec.cli",
                    "--no-setup",
                    "--preset",
                    preset,
                    "--dtype",
                    dtype,
                    "--json",
                    str(path),
                ],
                "spec",
            )
            if path.exists():
                jsons += ["--parity", str(path)]
    return _run(
        python, ["-m", "densenet_teach.cli", "--out", "reports/teach", *jsons, *argv], "spec"
    )


def kernels(argv) -> int:
    """One Jupyter kernel per framework environment, "densenet-parity (torch)", ..., for this user
    (notebooks/<framework>.ipynb names its kernel); builds the environments first."""
    from densenet_envs.kernels import display_name, register_kernel

    unknown = [n for n in argv if n not in FRAMEWORKS]
    if unknown:
        print(f"dev.py kernels: unknown framework {', '.join(unknown)}", file=sys.stderr)
        return 2
    frameworks = argv or list(FRAMEWORKS)
    for name in frameworks:
        python = envs.python_for(name)
        folder = register_kernel(name, python)
        print(f"[dev] kernel {display_name(name)!r}: {python} ({folder})", flush=True)
    print("[dev] open notebooks/<framework>.ipynb in Jupyter and pick its kernel")
    return 0


def _junit_counts(path: Path) -> dict:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if not path.exists():
        return counts
    root = ET.parse(path).getroot()
    for suite in root.iter("testsuite"):
        tests = int(suite.get("tests", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        counts["failed"] += failed
        counts["skipped"] += skipped
        counts["passed"] += tests - failed - skipped
    return counts


def lint(python) -> list[str]:
    """ruff, as configured in pyproject.toml: lint rules and the formatter's check."""
    broken = []
    for args in (["check", "."], ["format", "--check", "."]):
        print(f"[dev] ruff {' '.join(args)}", flush=True)
        if _run(python, ["-m", "ruff", *args], "spec") != 0:
            broken.append(f"ruff {args[0]}")
    return broken


def test(argv) -> int:
    start = time.time()
    pythons = envs.ensure_envs(SUITES)
    # the teaching page's browser test: Debian's Chromium (installed when running as root)
    browser.ensure_chromium(log=lambda m: print(f"[dev] {m}", flush=True))
    print(f"[dev] environments ready in {time.time() - start:.0f} s", flush=True)
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    broken = lint(pythons["spec"])
    with tempfile.TemporaryDirectory() as tmp:
        for name, paths in SUITES.items():
            paths = [p for p in paths if (ROOT / p).exists()]
            if not paths:
                broken.append(f"{name}: no test folder")
                continue
            xml = Path(tmp) / f"{name}.xml"
            t0 = time.time()
            print(
                f"\n[dev] ===== {name} tests ({', '.join(paths)}) in .venvs/{name} =====",
                flush=True,
            )
            # jaxlib 0.10.2's XLA:CPU segfaults compiling a train step after many compilations in
            # one process: the JAX suite runs one pytest process per test file.
            groups = [[p] for p in paths]
            if name == "jax":
                groups = [
                    [str(f.relative_to(ROOT))]
                    for p in paths
                    for f in sorted((ROOT / p).glob("test_*.py"))
                ]
            rc, counts = 0, {"passed": 0, "failed": 0, "skipped": 0}
            for i, group in enumerate(groups):
                part = xml.with_suffix(f".{i}.xml")
                rc = (
                    _run(
                        pythons[name],
                        ["-m", "pytest", "-q", f"--junitxml={part}", *group, *argv],
                        name,
                    )
                    or rc
                )
                for k, v in _junit_counts(part).items():
                    counts[k] += v
            print(f"[dev] {name}: {counts} in {time.time() - t0:.0f} s (exit {rc})", flush=True)
            for k in totals:
                totals[k] += counts[k]
            if rc != 0:
                broken.append(f"{name}: pytest exit {rc}")
    print(f"\n[dev] whole suite took {time.time() - start:.0f} s")
    if broken:
        print("[dev] failing suites: " + "; ".join(broken))
    print(
        f"total: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped"
    )
    return 1 if broken or totals["failed"] else 0


def main(argv) -> int:
    commands = {"parity": parity, "test": test, "bench": bench, "train": train, "teach": teach}
    commands["kernels"] = kernels
    if not argv or (argv[0] not in commands and argv[0] != "envs"):
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "envs":
        unknown = [n for n in rest if n not in envs.ENVIRONMENTS and n not in FRAMEWORKS]
        if unknown:
            print(
                f"dev.py envs: unknown environment {', '.join(unknown)}; "
                f"known: {', '.join(envs.ENVIRONMENTS)}",
                file=sys.stderr,
            )
            return 2
        envs.ensure_envs(rest or envs.ENVIRONMENTS)
        return 0
    return commands[command](rest)


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main(sys.argv[1:]))
