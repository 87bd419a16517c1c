"""`convrec eval`: score one or more prediction files on a split, one table row per file."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from convrec import artifacts
from convrec.catalog import Catalog
from convrec.cli.common import console, parse_ks
from convrec.data import load_catalog, load_split
from convrec.evaluation import EvalConfig, evaluate, metric_columns


def eval_command(
    predictions: list[Path] = typer.Argument(..., help="Prediction Parquet files (sample_id + text and/or items)."),
    data: Path = typer.Option(..., "--data", help="Data folder (catalog.parquet and split files)."),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    k: str = typer.Option("5,10,15,20", "--k", help="Cut-offs, comma-separated."),
    convention: str = typer.Option(
        "paper", "--convention", help="Ideal DCG: min(|gt|, filtered len, k) ('paper') or min(|gt|, k) ('textbook')."
    ),
    year_tolerance: int = typer.Option(2, "--year-tolerance", help="Years may differ by this much and still match."),
    no_year: bool = typer.Option(False, "--no-year", help="Year-less matching (catalogs whose titles carry no year)."),
    n_items: int = typer.Option(20, "--n-items", help="Expected list length (format validity, in-catalog ratio)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write all metrics as JSON here."),
    per_sample: Path | None = typer.Option(
        None, "--per-sample", help="Folder for per-sample metrics: one <prediction-name>.parquet per file."
    ),
) -> None:
    """Recall@k / NDCG@k (the paper's matching rules), in-catalog, format-valid and duplicate ratios."""
    from convrec.errors import ConvrecError

    if convention not in ("paper", "textbook"):
        raise ConvrecError(f"--convention must be 'paper' or 'textbook', got '{convention}'")
    ks = parse_ks(k)
    catalog = Catalog(load_catalog(data), year_tolerance=year_tolerance, use_year=not no_year)
    samples = load_split(data, split)
    cfg = EvalConfig(ks=ks, convention=convention, n_items=n_items)
    preds = [(p, artifacts.read(p, artifacts.PREDICTIONS)) for p in predictions]
    results = {}
    table = Table(title=f"{split} split · {samples.height:,} samples · {convention} NDCG")
    table.add_column("predictions")
    cols = metric_columns(ks)
    for c in cols:
        table.add_column(c.replace("recall", "R").replace("ndcg", "N"), justify="right")
    for c in ("in-cat", "valid", "dup", "len"):
        table.add_column(c, justify="right")
    for path, df in preds:
        summary, rows = evaluate(df, samples, catalog, cfg)
        results[str(path)] = summary
        table.add_row(
            path.stem,
            *[f"{summary[c]:.4f}" for c in cols],
            f"{summary['in_catalog']:.1%}",
            f"{summary['format_valid']:.1%}",
            f"{summary['duplicate_ratio']:.1%}",
            f"{summary['mean_list_length']:.1f}",
        )
        if summary["samples_without_prediction"]:
            console.print(
                f"[yellow]{path.name}: {summary['samples_without_prediction']:,} samples have no prediction "
                "(scored as empty lists)[/]"
            )
        if per_sample is not None:
            per_sample.mkdir(parents=True, exist_ok=True)
            artifacts.write(
                rows,
                per_sample / f"{path.stem}.parquet",
                stage="eval",
                params={"split": split, "k": list(ks)},
                inputs=[path],
            )
    console.print(table)
    if json_out is not None:
        artifacts.write_json({"split": split, "data": str(data), "results": results}, json_out)
        console.print(f"metrics written to {json_out}")
