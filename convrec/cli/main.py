"""The `convrec` command: one typer app; each command group lives in its own small module."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import typer
from rich.markup import escape

from convrec import __version__
from convrec.cli import (
    baseline,
    bounds,
    config,
    data,
    demo,
    evaluate,
    helptext,
    model,
    pipeline,
    report,
    rl,
    serve,
    sft,
)
from convrec.cli.common import err_console
from convrec.errors import ConvrecError

app = typer.Typer(
    name="convrec",
    help="Train and serve LLM-based conversational recommenders the ConvRec-R1 way "
    "(Remap/Reflect/Adjust distillation, then Rank-GRPO).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data.app, name="data")
app.add_typer(baseline.app, name="baseline")
app.add_typer(model.app, name="model")
app.command("eval")(evaluate.eval_command)
app.command("sft")(sft.sft_command)
app.command("generate")(sft.generate_command)
app.command("serve")(serve.serve_command)
app.command("rl")(rl.rl_command)
app.command("remap")(pipeline.remap_command)
app.command("reflect")(pipeline.reflect_command)
app.command("adjust")(pipeline.adjust_command)
app.command("report")(report.report_command)
app.command("demo")(demo.demo_command)


def click_root():
    """The click command tree behind `app`, every numeric option range-checked (`bounds`): what `main`
    runs, and what the config file and the demo's flag checks read."""
    root = typer.main.get_command(app)
    bounds.apply(root)
    helptext.apply(root)
    return root


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
    config_file: Path | None = typer.Option(
        None,
        "--config",
        help="TOML or YAML file with every command's settings (\\[sft], \\[rl], \\[data.synth], ...); "
        "flags on the command line win.",
    ),
) -> None:
    if version:
        typer.echo(f"convrec {__version__}")
        raise typer.Exit()
    if config_file is not None:
        ctx.default_map = config.load(ctx.command, config_file)


# Recent typer vendors its own click: catch both families of usage errors.
_USAGE_ERRORS = (
    click.ClickException,
    next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"),
)


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(2)


def main() -> None:
    """Entry point: user errors (bad input, bad flags) and the machine's (a full disk, a folder that cannot
    be made) become one line on stderr and exit code 2."""
    try:
        code = click_root().main(prog_name="convrec", standalone_mode=False)
    except ConvrecError as e:
        _fail(str(e))
    except _USAGE_ERRORS as e:
        ctx = getattr(e, "ctx", None)
        _fail(e.format_message() + (f" (see '{ctx.command_path} --help')" if ctx else ""))
    except OSError as e:
        _fail((e.strerror or str(e)) + (f": {e.filename}" if e.filename else ""))
    except (KeyboardInterrupt, click.Abort, typer.Abort):
        err_console.print("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
