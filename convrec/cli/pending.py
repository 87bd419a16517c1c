"""Commands later work builds; until then each says so in one line and exits 2."""

from __future__ import annotations

import typer

from convrec.cli.common import err_console

PENDING = {
    "demo": "Run the whole ConvRec-R1 pipeline on the embedded synthetic world.",
}


def register(app: typer.Typer) -> None:
    for name, help_text in PENDING.items():
        app.command(
            name,
            help=f"{help_text} (not available yet)",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
            add_help_option=True,
        )(_pending(name))


def _pending(name: str):
    def command(ctx: typer.Context) -> None:
        err_console.print(f"convrec {name}: not available yet in this version of convrec")
        raise typer.Exit(2)

    command.__name__ = f"{name}_command"
    return command
