"""Terminal rendering of a parity run (rich), kept apart from the harness logic."""

from __future__ import annotations

import shutil

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from densenet_spec.case import describe_inputs
from densenet_spec.harness import (
    ParityReport,
    describe_where,
    family_table,
    piece_rows,
    report_notes,
)

FAMILIES = ("eval", "train", "loss", "eval_grad", "train_grad", "step")


def console() -> Console:
    # CI logs are not terminals: give the matrix room instead of rich's default 80 columns.
    width = shutil.get_terminal_size((140, 40)).columns
    return Console(highlight=False, width=max(width, 120))


def logger(con: Console, status=None):
    """Print each harness step and show it beside a spinner while it runs (environment builds,
    workers, the oracle): the spinner is what a person watches during a minutes-long step."""

    def log(msg: str) -> None:
        con.print(f"[dim]{msg}[/]")
        if status is not None:
            status.update(f"{msg} ...")

    return log


def print_report(report: ParityReport, con: Console) -> None:
    c = report.case
    con.print(
        f"\n[bold]DenseNet parity[/]: {c.config.to_json()}\n"
        f"dtype {c.dtype}, device {c.device}, batch {c.x.shape[0]}, "
        f"image {c.x.shape[2]}x{c.x.shape[3]}, {describe_inputs(c)}, "
        f"{c.steps} SGD step(s) lr={c.sgd.lr} momentum={c.sgd.momentum} wd={c.sgd.weight_decay}"
    )
    rows = family_table(report)
    families = [f for f in FAMILIES if any(r["quantity"] == f for r in rows)]
    table = Table(title="relative max error (worst tensor of each quantity); red: over its bound")
    table.add_column("pair")
    for f in families:
        table.add_column(f, justify="right")
    cells = {(r["pair"], r["quantity"]): r for r in rows}
    bounds = []
    for f in families:
        fam_bounds = [r["bound"] for r in rows if r["quantity"] == f]
        lo, hi = min(fam_bounds), max(fam_bounds)
        bounds.append(f"{lo:.0e}" if lo == hi else f"{lo:.0e}..{hi:.0e}")
    table.add_row("[italic]bound[/]", *bounds)
    for pair in dict.fromkeys(r["pair"] for r in rows):
        out = []
        for f in families:
            r = cells.get((pair, f))
            if r is None:
                out.append("")
            else:
                color = "green" if r["failed"] == 0 else "bold red"
                out.append(f"[{color}]{r['error']:.1e}[/]")
        table.add_row(pair, *out)
    con.print(table)
    print_pieces(report, con)
    for note in report_notes(report):
        con.print(f"[yellow]{escape(note)}[/]")
    for r in rows:
        if r["failed"]:
            con.print(
                f"[red]{r['pair']}: {r['failed']} of {r['n']} {r['quantity']} tensors over bound; "
                f"worst {r['worst_key']} ({r['error']:.2e} > {r['bound']:.0e})[/]"
            )
    for p in report.pairs:
        if not p.ok:
            where = ", ".join(f"{k}: {v}" for k, v in p.first_divergence().items())
            con.print(f"[red]{p.a} and {p.b} part at[/] {where}")
    for name, run in report.runs.items():
        if not run.ok:
            con.print(f"[bold red]{name} did not run[/]: {run.error}")
    verdict = "[bold green]PARITY OK[/]" if report.ok else "[bold red]PARITY FAILED[/]"
    con.print(verdict)


def print_pieces(report: ParityReport, con: Console) -> None:
    """Float32 gradients: where each framework's linear piece differs from the oracle's (and the
    pairs' from each other); gradients were compared on each framework's own piece."""
    rows = piece_rows(report)
    if not rows:
        return
    table = Table(
        title="linear pieces: ReLU entries and max-pool windows on a different piece "
        "(float32 gradients are compared on each framework's own piece)"
    )
    for col in ("pair", "eval ReLU", "train ReLU", "pool windows", "SGD steps", "where"):
        table.add_column(col, justify="left" if col in ("pair", "where") else "right")
    for r in rows:
        if r["reported"]:
            where = describe_where(r["where"]) or "-"
            counts = (str(r[k]) for k in ("eval", "train", "pool", "steps"))
            table.add_row(r["pair"], *counts, where)
        else:
            why = f"[yellow]not reported: {r['reason']} (ReLU-kink allowance used)[/]"
            table.add_row(r["pair"], "", "", "", "", why)
    con.print(table)
