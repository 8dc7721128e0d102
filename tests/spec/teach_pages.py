"""Helpers for the teaching-page tests: read a built page back, make parity JSON without a run."""

from __future__ import annotations

import json
import textwrap
from html.parser import HTMLParser
from pathlib import Path

from densenet_spec.config import get_preset
from densenet_spec.params import param_specs, stage_names, trainable_names

ROOT = Path(__file__).resolve().parents[2]


class PanelParser(HTMLParser):
    """Every panel of a page: block, column, and each code segment's place and shown text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.panels: list[dict] = []
        self.block_attrs: list[dict] = []
        self._seg: dict | None = None
        self._in_code = 0
        self._depth = 0  # nesting inside the current <code>

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "section" and "block" in classes:
            self.block_attrs.append(a)
        if tag == "article" and "panel" in classes:
            self.panels.append(
                {
                    "block": a.get("data-block"),
                    "column": a.get("data-fw"),
                    "missing": "missing-panel" in classes,
                    "segments": [],
                    "marks": [],
                }
            )
        if tag == "div" and "seg" in classes:
            self._seg = {
                "path": a["data-path"],
                "start": int(a["data-start"]),
                "end": int(a["data-end"]),
                "text": "",
            }
            self.panels[-1]["segments"].append(self._seg)
        if tag == "code" and self._seg is not None and not self._in_code:
            self._in_code = 1
            self._depth = 0
        elif self._in_code:
            self._depth += 1
        if tag == "a" and "mark" in classes:
            self.panels[-1]["marks"].append(a.get("href"))

    def handle_endtag(self, tag):
        if self._in_code:
            if tag == "code" and self._depth == 0:
                self._in_code = 0
                self._seg = None
            else:
                self._depth -= 1

    def handle_data(self, data):
        if self._in_code and self._seg is not None:
            self._seg["text"] += data


def panels(html_text: str) -> list[dict]:
    p = PanelParser()
    p.feed(html_text)
    return p.panels


def source_text(root: Path, path: str, start: int, end: int) -> str:
    lines = (root / path).read_text(encoding="utf-8").splitlines()[start - 1 : end]
    return textwrap.dedent("\n".join(lines))


def parity_json(
    path: Path,
    *,
    preset: str = "d2l",
    dtype: str = "float64",
    failed: dict | None = None,
    bad_key: str | None = None,
) -> Path:
    """A `densenet-parity --json` report with every key compared and made-up small errors.

    failed: framework -> the error text of a worker that did not run. bad_key: one comparison
    over its bound (for every framework that ran)."""
    config = get_preset(preset)
    keys = [f"eval/{s}" for s in stage_names(config)] + ["loss/eval"]
    keys += [f"train/{s}" for s in stage_names(config)] + ["loss/train"]
    keys += ["eval_grad/input", "train_grad/input"]
    keys += [f"train_grad/{n}" for n in trainable_names(config)]
    keys += [f"step/{s.name}" for s in param_specs(config)]
    bound = 1e-10 if dtype == "float64" else 1e-4
    failed = failed or {}
    frameworks, pairs = {}, []
    for fw in ("torch", "jax", "tf", "mx"):
        if fw in failed:
            frameworks[fw] = {"ok": False, "info": {}, "error": failed[fw]}
            continue
        frameworks[fw] = {
            "ok": True,
            "info": {"versions": {fw: "1.0"}, "device": "cpu"},
            "error": "",
        }
        comps = []
        for i, k in enumerate(keys):
            error = bound * (10 if k == bad_key else 1e-3 * (1 + i % 7))
            comps.append({"key": k, "error": error, "bound": bound, "ok": error <= bound})
        pairs.append(
            {
                "a": fw,
                "b": "oracle",
                "ok": all(c["ok"] for c in comps),
                "first_divergence": {},
                "comparisons": comps,
            }
        )
    report = {
        "ok": not failed and bad_key is None,
        "command": f"densenet-parity --preset {preset} --dtype {dtype} --json {path.name}",
        "case": {
            "config": config.to_dict(),
            "dtype": dtype,
            "device": "cpu",
            "batch": 2,
            "image_size": [64, 64],
            "steps": 1,
            "sgd": {},
            "quantities": [],
        },
        "frameworks": frameworks,
        "oracle_seconds": 1.0,
        "mutations": {},
        "pairs": pairs,
    }
    path.write_text(json.dumps(report))
    return path
