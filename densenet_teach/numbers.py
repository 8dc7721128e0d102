"""The parity numbers beside the code: read the harness's JSON, reduce it per block.

`densenet-parity --json FILE` writes one run (one dtype, one config, one device): every comparison
of each framework with the NumPy oracle, key by key, with its error and bound
(densenet_spec.harness.ParityReport.to_json). A block's number for one quantity family is the worst
error/bound over the keys that measure it (densenet_teach.blocks.measured_by).
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from densenet_teach.blocks import FAMILIES, Block, in_network, measured_by

DTYPES = ("float64", "float32")
ORACLE = "oracle"


@dataclass
class Run:
    """One parity JSON file."""

    path: Path
    data: dict
    errors: dict[str, list[dict]] = field(default_factory=dict)  # framework -> comparisons

    @property
    def dtype(self) -> str:
        return self.case.get("dtype", "?")

    @property
    def case(self) -> dict:
        return self.data.get("case", {})

    @property
    def config(self) -> dict:
        return self.case.get("config", {})

    def framework(self, name: str) -> dict:
        return self.data.get("frameworks", {}).get(name, {})

    def written(self) -> str:
        stamp = _dt.datetime.fromtimestamp(self.path.stat().st_mtime, tz=_dt.timezone.utc)
        return stamp.strftime("%Y-%m-%d %H:%M UTC")

    def preset(self) -> str:
        """The preset whose config this run used (from the command, else by comparing configs)."""
        words = self.data.get("command", "").split()
        for i, w in enumerate(words):
            if w == "--preset" and i + 1 < len(words):
                return words[i + 1]
            if w.startswith("--preset="):
                return w.split("=", 1)[1]
        from densenet_spec.config import PRESETS

        for name, config in PRESETS.items():
            if config.to_dict() == self.config:
                return name
        return "default (d2l)" if self.data.get("command") else "custom config"


def load_run(path) -> Run:
    path = Path(path)
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "case" not in data or "pairs" not in data:
        raise ValueError(f"{path} is not a densenet-parity --json report (no case or pairs)")
    run = Run(path, data)
    for pair in data["pairs"]:
        if pair.get("b") == ORACLE:
            run.errors[pair["a"]] = pair.get("comparisons", [])
    return run


def runs_by_dtype(paths) -> tuple[dict[str, list[Run]], list[str]]:
    """dtype -> its runs in the order given, and warnings about files not used.

    Several runs of one dtype may use different presets: a block takes its numbers from the
    first run whose network has it (d2l has no bottleneck layer, densenet_bc_100 has)."""
    runs: dict[str, list[Run]] = {}
    warnings = []
    for p in paths:
        try:
            run = load_run(p)
        except (OSError, ValueError) as e:
            warnings.append(f"{p}: not used ({e})")
            continue
        runs.setdefault(run.dtype, []).append(run)
    return runs, warnings


def pick(runs: dict[str, list[Run]], dtype: str, block: Block) -> Run | None:
    """The run of `dtype` that measures `block`: the first whose network has the block."""
    candidates = runs.get(dtype, [])
    return next((r for r in candidates if in_network(block, r.config)), None) or next(
        iter(candidates), None
    )


@dataclass(frozen=True)
class Cell:
    """One number on the page: a block's worst error against the oracle in one family."""

    status: str  # "pass", "fail", "not run", "n/a" (no key measures it), "absent" (not in network)
    error: float | None = None
    bound: float | None = None
    key: str = ""  # the worst key
    n: int = 0  # comparisons folded into this cell
    failed: int = 0
    why: str = ""  # for "not run": the framework's error, last line

    def text(self) -> str:
        if self.status in ("pass", "fail"):
            return f"{self.error:.1e}"
        return {"not run": "not run", "n/a": "\u2013", "absent": "not in net"}[self.status]

    def title(self) -> str:
        if self.status in ("pass", "fail"):
            verdict = "within" if self.status == "pass" else f"{self.failed} of {self.n} over"
            return (
                f"worst relative error {self.error:.3g} at {self.key}; bound {self.bound:.3g} "
                f"({verdict} the bound, {self.n} tensors)"
            )
        if self.status == "absent":
            return "this run's network does not use this layer (see bn_size in the config)"
        if self.status == "n/a":
            return "no parity key measures this block in this family"
        return self.why or "no parity run for this dtype was given to densenet-teach"


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def cell(run: Run | None, framework: str, block: Block, family: str) -> Cell:
    if block.keys.get(family) is None:
        return Cell("n/a")
    if run is None:
        return Cell("not run")
    if not in_network(block, run.config):
        return Cell("absent")
    info = run.framework(framework)
    if framework not in run.errors:
        why = last_line(info.get("error", "")) or f"{framework} was not in this run"
        return Cell("not run", why=why)
    comps = [c for c in run.errors[framework] if measured_by(block, c["key"]) == family]
    if not comps:
        return Cell("not run", why="the run compared no key of this block (--quantities?)")

    def ratio(c: dict) -> float:
        return c["error"] / c["bound"] if c.get("bound") else float("inf")

    worst = max(comps, key=ratio)
    failed = sum(not c["ok"] for c in comps)
    return Cell(
        "fail" if failed else "pass",
        worst["error"],
        worst["bound"],
        worst["key"],
        len(comps),
        failed,
    )


def block_status(runs: dict[str, list[Run]], frameworks, block: Block) -> str:
    """The block's verdict over every framework, family and dtype: pass, fail or not run."""
    statuses = {
        cell(pick(runs, d, block), fw, block, fam).status
        for d in DTYPES
        for fw in frameworks
        for fam in FAMILIES
    }
    if "fail" in statuses:
        return "fail"
    if "pass" in statuses:
        return "partial" if statuses & {"not run", "absent"} else "pass"
    return "absent" if "absent" in statuses else "not run"
