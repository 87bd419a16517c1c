"""How learnable a synthetic world is: test NDCG@20 of popularity, of a reader of the conversation text,
and of the latent-taste oracle that drew the answers (`convrec data synth` prints it)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl

from convrec.baselines import popularity, predictions_frame, resolve_rows, top_n_excluding
from convrec.catalog import Catalog
from convrec.data import load_catalog, load_split
from convrec.data.synth import GENRES, World, answer_logits, world_from_catalog
from convrec.evaluation.evaluate import evaluate


def signal_note(data: str | Path) -> str:
    """One line for a synthetic data folder: popularity vs text reader vs taste oracle, test NDCG@20."""
    world = world_from_catalog(load_catalog(data))
    train, test = load_split(data, "train"), load_split(data, "test")
    latent = pl.read_parquet(Path(data) / "latent.parquet").filter(pl.col("split") == "test")
    latent = test.select("sample_id").join(latent, on="sample_id", how="left")  # the test split's order
    cat = Catalog(world.catalog)
    runs = {
        "popularity": popularity.recommend(train, test, cat),
        "text reader": _rank(world, cat, test, read_tastes(world, cat, test)),
        "taste oracle": _rank(world, cat, test, np.array(latent["taste"].to_list())),
    }
    ndcg = {name: evaluate(preds, test, cat)[0]["ndcg@20"] for name, preds in runs.items()}
    return "signal: test NDCG@20 " + " vs ".join(f"{name} {v:.4f}" for name, v in ndcg.items())


def _rank(world: World, cat: Catalog, samples: pl.DataFrame, tastes: np.ndarray, n: int = 20) -> pl.DataFrame:
    """Predictions: the n unseen items most likely under the answer model for each taste."""
    rows = top_n_excluding(answer_logits(world, tastes), resolve_rows(cat, samples["seen"]), n)
    return predictions_frame(samples["sample_id"].to_list(), rows, cat)


def read_tastes(world: World, cat: Catalog, samples: pl.DataFrame) -> np.ndarray:
    """Taste estimated from the text alone: genre names and mood phrases the user wrote, plus the
    genres of the movies they mentioned. A floor for what a model reading the text can reach."""
    patterns = [re.compile("|".join(re.escape(s) for s in [g, *moods]), re.IGNORECASE) for g, moods in GENRES.items()]
    tastes = np.zeros((samples.height, len(world.genres)))
    mentioned = resolve_rows(cat, samples["seen"])
    for i, msgs in enumerate(samples["messages"].to_list()):
        text = " ".join(m["content"] for m in msgs if m["role"] == "user")
        tastes[i] = [len(p.findall(text)) for p in patterns]
        tastes[i] += 0.5 * world.genre_matrix[mentioned[i]].sum(axis=0)
    return tastes / np.maximum(tastes.sum(axis=1, keepdims=True), 1e-9)
