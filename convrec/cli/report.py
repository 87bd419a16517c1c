"""`convrec report`: thin shell over `convrec.report` (PNG curves + index.md from run folders and eval JSONs)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from convrec.cli.common import console
from convrec.errors import ConvrecError


def report_command(
    runs: list[Path] | None = typer.Argument(
        None, help="Run folders written by `convrec sft` / `convrec rl` (metrics.jsonl, config.json)."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for the PNGs and index.md."),
    metrics: list[Path] | None = typer.Option(
        None, "--metrics", help="Eval JSON written by `convrec eval ... --json M.json` (repeatable)."
    ),
    smooth: int = typer.Option(0, "--smooth", help="Moving-average window in steps (0: about 1/15 of a run; 1: off)."),
) -> None:
    """Plot training curves and eval metrics of runs into PNGs and a Markdown summary page: a one-line
    reading first, then the tables (eval metrics with their 95 % intervals and paired differences).

    Example: convrec report out/demo/runs/sft out/demo/runs/rank_grpo --metrics out/demo/metrics.json --out rep
    """
    if not runs and not metrics:
        raise ConvrecError("no runs given: pass run folders (and/or eval JSON files with --metrics)")
    from convrec import report  # matplotlib loads only for this command

    loaded = report.load_runs(runs or [])
    evals = report.load_evals(metrics or [])
    with console.status("drawing figures"):
        result = report.write_report(loaded, evals, out, smooth)
    for note in (n for r in loaded for n in r.notes):
        console.print(f"[yellow]{note}[/]")
    if loaded:
        console.print(_table("runs", *report.run_rows(loaded)))
    if evals:
        console.print(_table("evaluation: mean [95% interval]", *report.eval_rows(evals)))
        paired = report.paired_rows(evals)
        if paired:
            console.print(_table("paired difference vs the baseline: mean [95% interval] · share ≤ 0", *paired))
    line = escape(report.reading(loaded, evals).replace("**", ""))
    console.print(f"reading: {line}", highlight=False, soft_wrap=True)
    drawn = [f for f in result.figures if f.file]
    for f in result.figures:
        if not f.file:
            console.print(f"[dim]skipped {f.title}: {f.caption}[/]")
    console.print(f"{len(drawn)} figures; report written to {result.index}")


def _table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    """The page's table for a terminal: a cell's interval and share go on lines of their own."""
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(row[0], *(c.replace(" [", "\n[").replace(" · ", "\n≤0: ") for c in row[1:]))
    return table
