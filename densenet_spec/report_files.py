"""The parity report as files: JSON (machines), Markdown (CI logs, PRs), self-contained HTML with a
heatmap of error per stage per framework pair (a teacher's screen)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from densenet_spec.case import describe_inputs
from densenet_spec.harness import (
    ParityReport,
    describe_where,
    family_table,
    piece_rows,
    report_notes,
)
from densenet_spec.params import stage_names


def stage_matrix(report: ParityReport, mode: str = "eval"):
    """(stages, pairs, errors, over) for forward stages of one mode: errors NaN where not compared;
    over True where that cell's own comparison fails its own bound."""
    stages = [s for s in stage_names(report.case.config)]
    pairs = [f"{p.a} vs {p.b}" for p in report.pairs]
    m = np.full((len(stages), len(pairs)), np.nan)
    over = np.zeros(m.shape, dtype=bool)
    for j, p in enumerate(report.pairs):
        by_key = {c.key: c for c in p.comparisons}
        for i, s in enumerate(stages):
            c = by_key.get(f"{mode}/{s}")
            if c is not None:
                m[i, j] = c.error
                over[i, j] = not c.ok
    return stages, pairs, m, over


def heatmap_png(report: ParityReport) -> bytes | None:
    if not report.pairs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in ("eval", "train") if m in report.case.quantities]
    if not modes:
        return None
    # A figure that fits a screen: at most ~14 x 12 inches (1540 x 1320 px at 110 dpi); the page
    # scales it down further (max-width: 100%).
    width = min(3 + 0.5 * len(report.pairs) * len(modes) + 2 * len(modes), 14)
    height = min(2 + 0.1 * len(stage_names(report.case.config)), 12)
    fig, axes = plt.subplots(1, len(modes), figsize=(width, height), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        stages, pairs, m, over = stage_matrix(report, mode)
        with np.errstate(divide="ignore"):
            logm = np.log10(np.maximum(m, 1e-20))
        im = ax.imshow(logm, aspect="auto", cmap="viridis", vmin=-18, vmax=0)
        ax.set_yticks(range(len(stages)), stages, fontsize=6)
        ax.set_xticks(range(len(pairs)), pairs, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{mode} mode: log10 relative error")
        for i, j in zip(*np.nonzero(over)):  # over its own bound (each cell has its own)
            ax.text(j, i, "x", ha="center", va="center", color="red", fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def markdown(report: ParityReport) -> str:
    c = report.case
    lines = [
        "# DenseNet parity report",
        "",
        f"**{'PASS' if report.ok else 'FAIL'}**: `{report.command}`",
        "",
        f"config: `{c.config.to_json()}`  ",
        f"dtype {c.dtype}, device {c.device}, batch {c.x.shape[0]}, "
        f"image {c.x.shape[2]}x{c.x.shape[3]}, {describe_inputs(c)}, {c.steps} SGD step(s) "
        f"(lr {c.sgd.lr}, momentum {c.sgd.momentum}, weight decay {c.sgd.weight_decay})",
        "",
        "## Relative max error per quantity (worst tensor)",
        "",
        "| pair | quantity | tensors | worst error | bound | worst key | result |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in family_table(report):
        res = "pass" if r["failed"] == 0 else f"**FAIL** ({r['failed']})"
        lines.append(
            f"| {r['pair']} | {r['quantity']} | {r['n']} | {r['error']:.2e} | {r['bound']:.0e} | "
            f"`{r['worst_key']}` | {res} |"
        )
    lines += [f"\n{note}" for note in report_notes(report)]
    pieces = piece_rows(report)
    if pieces:
        lines += ["", "## Linear pieces (float32 gradients)", "", PIECES_NOTE, ""]
        lines += [
            "| pair | eval ReLU entries | train ReLU entries | pool windows | SGD steps | where |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in pieces:
            if r["reported"]:
                where = describe_where(r["where"], limit=8) or "-"
                lines.append(
                    f"| {r['pair']} | {r['eval']} | {r['train']} | {r['pool']} | {r['steps']} | "
                    f"{where} |"
                )
            else:
                lines.append(f"| {r['pair']} | | | | | not reported: {r['reason']} |")
    bad = [p for p in report.pairs if not p.ok]
    if bad:
        lines += ["", "## Where frameworks part", ""]
        for p in bad:
            where = ", ".join(f"{k}: `{v}`" for k, v in p.first_divergence().items())
            lines.append(f"- {p.a} vs {p.b}: {where}")
    lines += [
        "",
        "## Environments",
        "",
        "| framework | ran | versions | device | precision settings | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, run in report.runs.items():
        info = run.info
        versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
        precision = ", ".join(f"{k}={v}" for k, v in info.get("precision", {}).items())
        lines.append(
            f"| {name} | {'yes' if run.ok else 'NO'} | {versions} | {info.get('device', '')} | "
            f"{precision} | {info.get('seconds', '')} |"
        )
    for name, run in report.runs.items():
        if not run.ok:
            lines += ["", f"### {name} did not run", "", "```", run.error, "```"]
    return "\n".join(lines) + "\n"


PIECES_NOTE = (
    "Each framework reports every BatchNorm output of its gradient passes and SGD steps; the "
    "float64 oracle recomputes the gradients and the SGD trajectory on that framework's own "
    "linear pieces (its ReLU masks and max-pool choices), and the float32 results are compared "
    "with those under the float32 rounding bound (SGD steps: entries over all steps). Pairs "
    "are compared through the oracle: a + (oracle on b's piece - oracle on a's). "
    "A framework that cannot report its piece is checked with the ReLU-kink allowance instead."
)


def _pieces_html(report: ParityReport) -> str:
    rows = piece_rows(report)
    if not rows:
        return ""
    esc = html.escape
    table = _table(
        ["pair", "eval ReLU entries", "train ReLU entries", "pool windows", "SGD steps", "where"],
        [
            [esc(r["pair"]), r["eval"], r["train"], r["pool"], r["steps"]]
            + [esc(describe_where(r["where"], 8))]
            if r["reported"]
            else [esc(r["pair"]), "", "", "", "", esc(f"not reported: {r['reason']}")]
            for r in rows
        ],
    )
    return f"<h2>Linear pieces (float32 gradients)</h2><p>{esc(PIECES_NOTE)}</p>{table}"


def _table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(report: ParityReport) -> str:
    """One self-contained page: verdict, command, table, where pairs part, environments, image."""
    c, esc = report.case, html.escape
    png = heatmap_png(report)
    verdict = "<b style='color:green'>PASS</b>" if report.ok else "<b style='color:red'>FAIL</b>"
    matrix = _table(
        ["pair", "quantity", "tensors", "worst error", "bound", "worst key", "result"],
        [
            [
                esc(r["pair"]),
                r["quantity"],
                r["n"],
                f"{r['error']:.2e}",
                f"{r['bound']:.0e}",
                f"<code>{esc(r['worst_key'])}</code>",
                "pass" if r["failed"] == 0 else f"<b style='color:red'>FAIL ({r['failed']})</b>",
            ]
            for r in family_table(report)
        ],
    )
    parts = "".join(
        f"<li>{esc(p.a)} vs {esc(p.b)}: "
        + ", ".join(f"{k}: <code>{esc(v)}</code>" for k, v in p.first_divergence().items())
        + "</li>"
        for p in report.pairs
        if not p.ok
    )
    environments = _table(
        ["framework", "ran", "versions", "device", "precision settings", "seconds"],
        [
            [
                esc(n),
                "yes" if r.ok else "<b>NO</b>",
                esc(", ".join(f"{k} {v}" for k, v in r.info.get("versions", {}).items())),
                esc(str(r.info.get("device", ""))),
                esc(", ".join(f"{k}={v}" for k, v in r.info.get("precision", {}).items())),
                esc(str(r.info.get("seconds", ""))),
            ]
            for n, r in report.runs.items()
        ],
    )
    errors = "".join(
        f"<h3>{esc(n)} did not run</h3><pre>{esc(r.error)}</pre>"
        for n, r in report.runs.items()
        if not r.ok
    )
    img = (
        "<img alt='error heatmap' style='max-width:100%;height:auto' "
        f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        if png
        else ""
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>DenseNet parity</title>"
        f"<style>{style}</style></head><body><h1>DenseNet parity report: {verdict}</h1>"
        f"<p>Reproduce: <code>{esc(report.command)}</code></p>"
        f"<p>config <code>{esc(c.config.to_json())}</code><br>dtype {c.dtype}, device {c.device}, "
        f"batch {c.x.shape[0]}, image {c.x.shape[2]}x{c.x.shape[3]}, {esc(describe_inputs(c))}, "
        f"{c.steps} SGD step(s)</p>"
        f"<h2>Relative max error per quantity (worst tensor)</h2>{matrix}"
        + "".join(f"<p>{esc(note)}</p>" for note in report_notes(report))
        + _pieces_html(report)
        + (f"<h2>Where frameworks part</h2><ul>{parts}</ul>" if parts else "")
        + f"<h2>Environments</h2>{environments}{errors}"
        f"<h2>Error per stage and pair</h2><p>red x: that stage's error is over its own bound</p>"
        f"{img}</body></html>"
    )


def write_report(report: ParityReport, folder) -> dict[str, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": folder / "parity.json",
        "markdown": folder / "parity.md",
        "html": folder / "parity.html",
    }
    paths["json"].write_text(json.dumps(report.to_json(), indent=1))
    paths["markdown"].write_text(markdown(report))
    paths["html"].write_text(html_page(report))
    return paths
