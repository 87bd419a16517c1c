"""`convrec data`: the synthetic world and importers for real datasets."""

from __future__ import annotations

from pathlib import Path

import typer

from convrec.cli.choices import Size
from convrec.cli.common import console, print_report
from convrec.data.logs import LogFormat, SplitBy

app = typer.Typer(help="Make or import datasets (catalog.parquet + train/val/test samples).", no_args_is_help=True)


@app.command("synth")
def synth_command(
    out: Path = typer.Option(..., "--out", help="Data folder to write."),
    seed: int = typer.Option(0, "--seed", help="Random seed (the world is deterministic given it)."),
    size: Size = typer.Option("small", "--size", help="small (hundreds of items) or medium (thousands)."),
) -> None:
    """A deterministic synthetic movie world: the embedded default of the toolkit."""
    from convrec.data import MatchRules, write_rules
    from convrec.data.synth import generate
    from convrec.evaluation.synth_signal import signal_note

    report = generate(out, seed=seed, size=size)
    write_rules(out, MatchRules())  # titles with years, matched within 2 years: what the world is made for
    report.notes.append(signal_note(out))
    print_report(report)


@app.command("redial")
def redial_command(
    path: Path = typer.Argument(..., help="ReDIAL or INSPIRED jsonl in the He et al. (CIKM 2023) format."),
    out: Path = typer.Option(..., "--out", help="Data folder to write."),
    seed: int = typer.Option(0, "--seed", help="Seed of the deterministic split by dialog id."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of dialogs for validation."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of dialogs for test."),
) -> None:
    """Import ReDIAL (or INSPIRED) conversations, splitting by dialog id and building the catalog from mentions;
    the folder records its matching rules (matching.json), year-less when no name carries a year."""
    from convrec.data.redial import import_redial

    print_report(import_redial(path, out, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction))


@app.command("reddit-v2")
def reddit_v2_command(
    path: Path = typer.Argument(..., help="The paper's processed Reddit-v2 release (a datasets save_to_disk folder)."),
    out: Path = typer.Option(..., "--out", help="Data folder to write."),
    catalog: Path | None = typer.Option(
        None, "--catalog", help="Catalog file (CSV, Parquet or the paper's pickle); default: built from the data."
    ),
) -> None:
    """Import the Reddit-v2 benchmark (train / validation / test) used by the Rank-GRPO paper."""
    from convrec.data.reddit_v2 import import_reddit_v2

    print_report(import_reddit_v2(path, out, catalog=catalog))


@app.command("catalog")
def catalog_command(
    path: Path = typer.Argument(..., help="CSV or Parquet with title and year columns, or a pickle of (title, year)."),
    out: Path = typer.Option(..., "--out", help="catalog.parquet to write."),
) -> None:
    """Convert a catalog file into convrec's catalog artifact."""
    from convrec.data.catalog_import import import_catalog

    print_report(import_catalog(path, out))


@app.command("import")
def import_command(
    logs: Path = typer.Argument(
        ..., help="Conversation logs: chat JSONL, CSV/Parquet rows (id, role, text), or a datasets folder."
    ),
    catalog: Path = typer.Option(..., "--catalog", help="Catalog CSV or Parquet (title, year, optional metadata)."),
    out: Path = typer.Option(..., "--out", help="Data folder to write (replaced as a whole, never half-written)."),
    fmt: LogFormat = typer.Option("auto", "--format", help="Log shape; auto: by the file suffix (a folder: hf)."),
    id_field: str = typer.Option(
        "conversation_id", "--id-field", help="Conversation id key/column (JSONL: else the line number)."
    ),
    messages_field: str = typer.Option(
        "messages", "--messages-field", help="Key of the message list (chat JSONL, datasets; ShareGPT: conversations)."
    ),
    role_field: str = typer.Option("role", "--role-field", help="Role key of a message, or role column of rows."),
    text_field: str = typer.Option("content", "--text-field", help="Text key of a message, or text column of rows."),
    time_field: str = typer.Option(
        "timestamp", "--time-field", help="Timestamp key/column (epoch seconds or ISO 8601), used when present."
    ),
    ground_truth_field: str | None = typer.Option(
        None,
        "--ground-truth-field",
        help="Key/column of assistant turns listing the recommended items; default: the catalog titles "
        "an assistant turn names.",
    ),
    require_year: bool = typer.Option(
        False,
        "--require-year",
        help='Read a catalog title in the text only when its year follows, "Title (Year)": fewer false '
        'hits on one-word titles ("It is great") when the logs write years.',
    ),
    split_by: SplitBy = typer.Option(
        "auto", "--split-by", help="auto: by time when every conversation has a timestamp, else by id hash."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the split by conversation id."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of conversations for validation."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of conversations for test."),
) -> None:
    """Import your own conversation logs and catalog; writes the data folder with REPORT.md and report.json."""
    from convrec.data.data_report import markdown
    from convrec.data.log_import import SplitOptions, import_logs
    from convrec.data.logs import LogFields

    fields = LogFields(id_field, role_field, text_field, time_field, ground_truth_field, messages_field)
    split = SplitOptions(split_by, seed, val_fraction, test_fraction)
    report, data_report = import_logs(
        logs, catalog, out, fmt=fmt, fields=fields, split=split, require_year=require_year
    )
    print_report(report)
    console.print(markdown(data_report))
