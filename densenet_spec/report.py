"""Terminal rendering of a parity run (rich), kept apart from the harness logic."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from densenet_spec.harness import ParityReport, family_table


def console() -> Console:
    return Console(highlight=False)


def logger(con: Console):
    return lambda msg: con.print(f"[dim]{msg}[/]")


def print_report(report: ParityReport, con: Console) -> None:
    c = report.case
    con.print(
        f"\n[bold]DenseNet parity[/]: {c.config.to_json()}\n"
        f"dtype {c.dtype}, device {c.device}, batch {c.x.shape[0]}, image {c.x.shape[2]}x{c.x.shape[3]}, "
        f"{c.steps} SGD step(s) lr={c.sgd.lr} momentum={c.sgd.momentum} wd={c.sgd.weight_decay}"
    )
    table = Table(title="relative max error per quantity (worst tensor) vs bound")
    for col in ("pair", "quantity", "tensors", "worst error", "bound", "worst key", "result"):
        table.add_column(col)
    for row in family_table(report):
        ok = row["failed"] == 0
        table.add_row(
            row["pair"],
            row["quantity"],
            str(row["n"]),
            f"{row['error']:.2e}",
            f"{row['bound']:.0e}",
            row["worst_key"],
            "[green]pass[/]" if ok else f"[red]FAIL ({row['failed']})[/]",
        )
    con.print(table)
    for p in report.pairs:
        if not p.ok:
            where = ", ".join(f"{k}: {v}" for k, v in p.first_divergence().items())
            con.print(f"[red]{p.a} and {p.b} part at[/] {where}")
    for name, run in report.runs.items():
        if not run.ok:
            con.print(f"[bold red]{name} did not run[/]: {run.error}")
    verdict = "[bold green]PARITY OK[/]" if report.ok else "[bold red]PARITY FAILED[/]"
    con.print(verdict)
