"""Shared CLI plumbing: one console, one-line errors, small parsers for flag values."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from convrec.data.report import ImportReport
from convrec.errors import ConvrecError

console = Console()
if not console.is_terminal:  # piped or captured: tables keep their full width instead of 80 columns
    console.width = 160
err_console = Console(stderr=True)


def parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        raise ConvrecError(f"--k must be comma-separated positive integers, got '{text}'") from None
    if not ks or ks[0] <= 0:
        raise ConvrecError(f"--k must be comma-separated positive integers, got '{text}'")
    return ks


def print_report(report: ImportReport) -> None:
    table = Table(title=report.source, show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    for k, v in report.counts.items():
        table.add_row(k, f"{v:,}")
    for reason, n in sorted(report.rejected.items()):
        table.add_row(f"[yellow]rejected: {reason}[/]", f"{n:,}")
    console.print(table)
    for note in report.notes:
        console.print(note)


def renamed(old: str, new: str) -> Any:
    """A hidden option under a flag's old name: using it is a one-line error naming the new one
    (checked first, before a missing required option could be reported instead)."""

    def reject(value: str | None) -> None:
        if value is not None:
            raise ConvrecError(f"{old} is now {new} (one name per concept across commands)")

    return typer.Option(None, old, hidden=True, is_eager=True, expose_value=False, callback=reject)
