"""`convrec baseline popularity|cooc`: non-LLM baselines writing the predictions schema."""

from __future__ import annotations

from pathlib import Path

import typer

from convrec import artifacts
from convrec.cli.common import console
from convrec.data import catalog_path, load_split, open_catalog, split_path

app = typer.Typer(help="Non-LLM baselines: popularity and item co-occurrence.", no_args_is_help=True)

DATA = typer.Option(..., "--data", help="Data folder (catalog.parquet and split files).")
SPLIT = typer.Option("test", "--split", help="Split to recommend for.")
OUT = typer.Option(..., "--out", help="Predictions Parquet to write.")
N = typer.Option(20, "--n", help="List length.")


def _run(kind: str, data: Path, split: str, out: Path, n: int, **params) -> None:
    from convrec.baselines import cooc, popularity

    catalog = open_catalog(data)
    train = load_split(data, "train")
    samples = load_split(data, split)
    model = {"popularity": popularity, "cooc": cooc}[kind]
    with console.status(f"{kind}: recommending for {samples.height:,} samples"):
        preds = model.recommend(train, samples, catalog, n=n, **params)
    artifacts.write(
        preds,
        out,
        artifacts.PREDICTIONS,
        stage=f"baseline.{kind}",
        params={"split": split, "n": n, **params},
        inputs=[catalog_path(data), split_path(data, "train"), split_path(data, split)],
    )
    console.print(f"{kind}: wrote {preds.height:,} lists to {out}")


@app.command("popularity")
def popularity_command(data: Path = DATA, split: str = SPLIT, out: Path = OUT, n: int = N) -> None:
    """The items most often recommended in train, minus each conversation's seen items."""
    _run("popularity", data, split, out, n)


@app.command("cooc")
def cooc_command(
    data: Path = DATA,
    split: str = SPLIT,
    out: Path = OUT,
    n: int = N,
    prior: float = typer.Option(0.2, "--prior", help="Weight of the popularity prior (0 = mentions only)."),
) -> None:
    """Item-kNN over conversation mentions: what gets recommended after what was mentioned."""
    _run("cooc", data, split, out, n, prior=prior)
