"""The `convrec` command: one typer app; each command group lives in its own small module."""

from __future__ import annotations

import sys

import typer

from convrec import __version__
from convrec.cli import baseline, data, evaluate, pending
from convrec.cli.common import err_console
from convrec.errors import ConvrecError

app = typer.Typer(
    name="convrec",
    help="Train and serve LLM-based conversational recommenders the ConvRec-R1 way "
    "(Remap/Reflect/Adjust distillation, then Rank-GRPO).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data")
app.add_typer(baseline.app, name="baseline")
app.command("eval")(evaluate.eval_command)
pending.register(app)  # stages that later work builds


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        typer.echo(f"convrec {__version__}")
        raise typer.Exit()


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except ConvrecError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
