"""`convrec eval`: score one or more prediction files on a split, one table row per file (per file
and condition for he2023), every metric with its 95 % interval; `--baseline` adds paired
differences against one reference file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich.table import Table

from convrec import artifacts
from convrec.cli.choices import Split
from convrec.cli.common import console, parse_ks
from convrec.data import load_split, open_catalog
from convrec.evaluation.evaluate import EvalConfig, compare, evaluate, metric_columns
from convrec.evaluation.metrics import PROTOCOLS

Protocol = Literal[tuple(PROTOCOLS)]  # type: ignore[valid-type]


def _cell(mean: float, interval: list[float]) -> str:
    return f"{mean:.4f}\n[{interval[0]:.3f}, {interval[1]:.3f}]"


def _diff(d: dict) -> str:
    return f"{d['diff']:+.4f}\n[{d['low']:+.3f}, {d['high']:+.3f}]\n≤0: {d['share_le_0']:.3f}"


def _short(col: str) -> str:
    return col.replace("recall", "R").replace("ndcg", "N").replace("mrr", "MRR")


def eval_command(
    predictions: list[Path] = typer.Argument(..., help="Prediction Parquet files (sample_id + text and/or items)."),
    data: Path = typer.Option(..., "--data", help="Data folder (catalog.parquet, split files, matching.json)."),
    split: Split = typer.Option("test", "--split", help="The split the predictions answer."),
    protocol: Protocol = typer.Option(
        "convrec", "--protocol", help="Rule set: convrec, the authors' code, He et al. 2023 (docs/evaluation.md)."
    ),
    k: str | None = typer.Option(None, "--k", help="Cut-offs, comma-separated (default: the protocol's)."),
    convention: Literal["paper", "textbook"] = typer.Option(
        "paper", "--convention", help="Ideal DCG: min(|gt|, filtered len, k) ('paper') or min(|gt|, k) ('textbook')."
    ),
    year_tolerance: int | None = typer.Option(
        None, "--year-tolerance", help="Override the data folder's year tolerance (matching.json)."
    ),
    no_year: bool | None = typer.Option(
        None, "--no-year/--use-year", help="Override the data folder's year-less setting (matching.json)."
    ),
    n_items: int = typer.Option(20, "--n-items", help="List length asked for: convrec cuts lists to it first."),
    baseline: Path | None = typer.Option(
        None, "--baseline", help="Reference predictions: paired differences of every file against it."
    ),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the intervals (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resamples."),
    json_out: Path | None = typer.Option(None, "--json", help="Write all metrics as JSON here."),
    per_sample: Path | None = typer.Option(
        None, "--per-sample", help="Folder for per-sample metrics: one <prediction-name>.parquet per file."
    ),
) -> None:
    """Recall@k / NDCG@k (MRR@k for he2023) with 95 % intervals, in-catalog, format-valid and duplicate ratios."""
    from convrec.errors import ConvrecError

    if protocol not in PROTOCOLS:
        raise ConvrecError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got '{protocol}'")
    ks = parse_ks(k) if k is not None else PROTOCOLS[protocol].ks
    cfg = EvalConfig(ks=ks, convention=convention, n_items=n_items, protocol=protocol, n_boot=bootstrap, seed=seed)
    cfg.check()
    catalog = open_catalog(data, year_tolerance=year_tolerance, use_year=None if no_year is None else not no_year)
    samples = load_split(data, split)
    files = ([baseline] if baseline is not None and baseline not in predictions else []) + list(predictions)
    preds = [(p, artifacts.read(p, artifacts.PREDICTIONS)) for p in files]
    cols = metric_columns(ks, PROTOCOLS[protocol].measures)
    rules = "year-less" if not catalog.use_year else f"years ±{catalog.year_tolerance}"
    if protocol == "he2023":
        rules = "years ignored"
    table = Table(title=f"{split} split · {samples.height:,} samples · protocol {protocol} · {rules} · [95% interval]")
    table.add_column("predictions")
    if PROTOCOLS[protocol].per_item:
        table.add_column("condition")
    table.add_column("n", justify="right")
    for c in cols:
        table.add_column(_short(c), justify="right")
    for c in ("in-cat", "valid", "dup", "len"):
        table.add_column(c, justify="right")
    results, rows_of = {}, {}
    for path, df in preds:
        summary, rows = evaluate(df, samples, catalog, cfg)
        results[str(path)], rows_of[path] = summary, rows
        stats = (
            f"{summary['in_catalog']:.1%}",
            f"{summary['format_valid']:.1%}",
            f"{summary['duplicate_ratio']:.1%}",
            f"{summary['mean_list_length']:.1f}",
        )
        if PROTOCOLS[protocol].per_item:
            for cond, part in summary["conditions"].items():
                cells = [_cell(part[c]["mean"], part[c]["ci95"]) if part["n"] else "-" for c in cols]
                table.add_row(path.stem, cond, f"{part['n']:,}", *cells, *stats)
        else:
            n = int((rows["n_gt"] > 0).sum())
            cells = [
                f"{summary[c]:.4f} [{summary['intervals'][c][0]:.3f}, {summary['intervals'][c][1]:.3f}]" for c in cols
            ]
            table.add_row(path.stem, f"{n:,}", *cells, *stats)
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
                params={"split": split, "k": list(ks), "protocol": protocol},
                inputs=[path],
            )
    console.print(table)
    if baseline is not None:
        paired = Table(title=f"paired difference vs {baseline.stem}: mean [95% interval] · share of resamples ≤ 0")
        paired.add_column("predictions")
        names = [f"{m}@{x}" for m in ("ndcg", "recall") for x in ks]
        for c in names:
            paired.add_column(_short(c), justify="right")
        for path, _ in preds:
            if path == baseline:
                continue
            d = compare(rows_of[path], rows_of[baseline], cfg)
            results[str(path)]["paired_vs_baseline"] = {"baseline": str(baseline), **d}
            paired.add_row(
                path.stem,
                *[
                    f"{d[c]['diff']:+.4f} [{d[c]['low']:+.3f}, {d[c]['high']:+.3f}] · {d[c]['share_le_0']:.3f}"
                    for c in names
                ],
            )
        console.print(paired)
    if json_out is not None:
        artifacts.write_json(
            {"split": split, "data": str(data), "protocol": protocol, "rules": rules, "results": results}, json_out
        )
        console.print(f"metrics written to {json_out}")
