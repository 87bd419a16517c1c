"""`convrec model`: build student models locally."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from convrec.cli.common import console

app = typer.Typer(help="Build or inspect student models.", no_args_is_help=True)


@app.command("init")
def init_command(
    data: Path = typer.Option(..., "--data", help="Data folder: the tokenizer is trained on its texts and catalog."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (save_pretrained layout)."),
    size: str = typer.Option("tiny", "--size", help="tiny (~2M parameters) or small (~6M)."),
    seed: int = typer.Option(0, "--seed", help="Initialisation seed."),
) -> None:
    """A tiny Llama-family model from scratch: locally trained BPE tokenizer, chat template, random weights."""
    from convrec.models.tiny import init_model

    with console.status("training the tokenizer and building the model"):
        info = init_model(data, out, size=size, seed=seed)
    table = Table(title=f"model written to {out}")
    table.add_column("what")
    table.add_column("value", justify="right")
    for k, v in info.items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    console.print(table)
