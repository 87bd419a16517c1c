"""`convrec baseline popularity|cooc`: non-LLM baselines writing the predictions schema."""

from __future__ import annotations

from pathlib import Path

import typer

from convrec import artifacts
from convrec.cli.choices import Split
from convrec.cli.common import console, renamed
from convrec.data import catalog_path, load_split, open_catalog, split_path

app = typer.Typer(help="Non-LLM baselines: popularity and item co-occurrence.", no_args_is_help=True)

DATA = typer.Option(..., "--data", help="Data folder (catalog.parquet and split files).")
SPLIT = typer.Option("test", "--split", help="Split to recommend for.")
OLD_N = renamed("--n", "--n-items")
OUT = typer.Option(..., "--out", help="Predictions Parquet to write.")
N_ITEMS = typer.Option(20, "--n-items", help="List length N.")


def _run(kind: str, data: Path, split: str, out: Path, n_items: int, **params) -> None:
    from convrec.baselines import cooc, popularity

    catalog = open_catalog(data)
    train = load_split(data, "train")
    samples = load_split(data, split)
    model = {"popularity": popularity, "cooc": cooc}[kind]
    with console.status(f"{kind}: recommending for {samples.height:,} samples"):
        preds = model.recommend(train, samples, catalog, n=n_items, **params)
    artifacts.write(
        preds,
        out,
        artifacts.PREDICTIONS,
        stage=f"baseline.{kind}",
        params={"split": split, "n_items": n_items, **params},
        inputs=[catalog_path(data), split_path(data, "train"), split_path(data, split)],
    )
    console.print(f"{kind}: wrote {preds.height:,} lists to {out}")


@app.command("popularity")
def popularity_command(
    data: Path = DATA, split: Split = SPLIT, out: Path = OUT, n_items: int = N_ITEMS, _n: str | None = OLD_N
) -> None:
    """The items most often recommended in train, minus each conversation's seen items."""
    _run("popularity", data, split, out, n_items)


@app.command("cooc")
def cooc_command(
    data: Path = DATA,
    split: Split = SPLIT,
    out: Path = OUT,
    n_items: int = N_ITEMS,
    prior: float = typer.Option(0.2, "--prior", help="Weight of the popularity prior (0 = mentions only)."),
    _n: str | None = OLD_N,
) -> None:
    """Item-kNN over conversation mentions: what gets recommended after what was mentioned."""
    _run("cooc", data, split, out, n_items, prior=prior)
