"""A deterministic synthetic movie world: the embedded default of convrec.

Items have generated titles covering the hard cases of matching (remakes sharing a title, sequels,
subtitles, leading articles, apostrophes, digits, ampersands), years 1950-2024, 1-3 genres, Zipf
popularity and a one-line description. Each conversation belongs to a user with a latent taste, a
sparse mixture over genres; the user reveals it through genre names, mood phrases and liked movies
(the `seen` items, mentioned with or without a year) in 1-3 turns (the words live in `synth_text`).
Ground truth is drawn with probability ∝ popularity^POP_EXP · exp(TASTE_SCALE · taste·genres), never
a seen item, so the text carries a signal that popularity alone misses. `generate` measures it on
the test split: a popularity baseline, a bag-of-words reader of the text, and an oracle that knows
the latent taste.

`latent.parquet` keeps each sample's taste (ordered as the `genres` provenance parameter) and item
ids; `world_from_catalog` + `answer_logits` rebuild the true answer distribution from the files
alone, for oracles and a synthetic teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from convrec import artifacts
from convrec.catalog import normalize_title
from convrec.data import SPLITS, catalog_path, split_path
from convrec.data.report import ImportReport
from convrec.data.synth_text import GENRES, conversation, description, titles
from convrec.data.synth_text import REMAKE_GAP as REMAKE_GAP  # re-exported: the world's documented constants
from convrec.data.synth_text import YEARS as YEARS
from convrec.errors import ConvrecError

# genre -> mood phrases (noun phrases a user says instead of the genre; none names another genre)
SIZES = {  # catalog items, train / val / test conversations (~1.2 samples each)
    "small": (360, 1250, 170, 250),
    "medium": (2500, 8500, 850, 1250),
}
POP_EXP = 0.35  # popularity^POP_EXP: weak, so the taste dominates the answers
TASTE_SCALE = 7.0
MULTI_ANSWER = 0.2  # share of conversations answered by two users (two samples, one conversation)


@dataclass(frozen=True)
class World:
    """What the answer distribution needs, rebuilt from a catalog frame (`world_from_catalog`)."""

    catalog: pl.DataFrame
    genres: list[str]  # the order of the taste vector
    genre_matrix: np.ndarray  # items x genres, each row sums to 1
    log_pop: np.ndarray
    titles: list[str]
    years: list[int]
    shared_title: np.ndarray  # bool per item: a remake shares its normalised title


def make_catalog(rng: np.random.Generator, n_items: int) -> pl.DataFrame:
    genres = list(GENRES)
    named = titles(rng, n_items)
    item_genres = []
    for _ in range(n_items):
        k = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
        item_genres.append([genres[c] for c in sorted(rng.choice(len(genres), size=k, replace=False))])
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9  # Zipf, assigned to items at random
    pop = pop[rng.permutation(n_items)] / pop.sum() * 1000
    return pl.DataFrame(
        {
            "item_id": [f"m{i:05d}" for i in range(n_items)],
            "title": [t for t, _ in named],
            "year": [y for _, y in named],
            "genres": item_genres,
            "description": [description(rng, gs) for gs in item_genres],
            "popularity": pop.round(4),
        }
    )


def world_from_catalog(catalog: pl.DataFrame) -> World:
    """The answer model's inputs from a (synthetic) catalog frame, exactly as stored on disk."""
    genres = list(GENRES)
    col = {g: j for j, g in enumerate(genres)}
    g = np.zeros((catalog.height, len(genres)))
    for i, gs in enumerate(catalog["genres"].to_list()):
        g[i, [col[x] for x in gs]] = 1.0 / len(gs)
    titles, years = catalog["title"].to_list(), catalog["year"].to_list()
    norms = [normalize_title(t) for t in titles]
    counts: dict[str, int] = {}
    for n in norms:
        counts[n] = counts.get(n, 0) + 1
    shared = np.array([counts[n] > 1 for n in norms])
    log_pop = np.log(catalog["popularity"].to_numpy())
    return World(catalog, genres, g, log_pop, titles, years, shared)


def answer_logits(world: World, tastes: np.ndarray) -> np.ndarray:
    """Log-probabilities (up to a constant) of each item being an answer: (items,) or (tastes, items)."""
    return POP_EXP * world.log_pop + TASTE_SCALE * (tastes @ world.genre_matrix.T)


def item_probabilities(world: World, taste: np.ndarray) -> np.ndarray:
    """The true answer distribution of one user (before removing seen items)."""
    logits = answer_logits(world, taste)
    p = np.exp(logits - logits.max())
    return p / p.sum()


def _sample_taste(rng: np.random.Generator, n_genres: int) -> np.ndarray:
    k = int(rng.choice([1, 2, 3], p=[0.45, 0.45, 0.1]))
    taste = np.zeros(n_genres)
    taste[rng.choice(n_genres, size=k, replace=False)] = rng.dirichlet(np.full(k, 2.0))
    return taste


def _draw(rng: np.random.Generator, p: np.ndarray, k: int, exclude: list[int]) -> list[int]:
    p = p.copy()
    p[exclude] = 0.0
    return rng.choice(len(p), size=k, replace=False, p=p / p.sum()).tolist()


def _samples(rng: np.random.Generator, world: World, n_conv: int, split: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    ids = world.catalog["item_id"].to_list()
    rows, latent = [], []
    for c in range(n_conv):
        taste = _sample_taste(rng, len(world.genres))
        p = item_probabilities(world, taste)
        liked = _draw(rng, p, int(rng.choice([0, 1, 2, 3], p=[0.2, 0.4, 0.28, 0.12])), [])
        messages, seen = conversation(rng, world, taste, liked)
        conv_id = f"{split}-{c:06d}"
        for a in range(2 if rng.random() < MULTI_ANSWER else 1):
            gt = _draw(rng, p, int(rng.integers(1, 5)), liked)
            sid = f"{conv_id}-{a}"
            rows.append(
                {
                    "sample_id": sid,
                    "conversation_id": conv_id,
                    "messages": messages,
                    "seen": seen,
                    "ground_truth": [{"title": world.titles[r], "year": world.years[r]} for r in gt],
                }
            )
            latent.append(
                {
                    "sample_id": sid,
                    "split": split,
                    "taste": taste.tolist(),
                    "seen_item_ids": [ids[r] for r in liked],
                    "ground_truth_item_ids": [ids[r] for r in gt],
                }
            )
    schema = {"sample_id": pl.String, "split": pl.String, "taste": pl.List(pl.Float64)}
    schema |= {"seen_item_ids": pl.List(pl.String), "ground_truth_item_ids": pl.List(pl.String)}
    return pl.DataFrame(rows, schema=artifacts.SAMPLES.required), pl.DataFrame(latent, schema=schema)


def generate(out: str | Path, *, seed: int = 0, size: str = "small") -> ImportReport:
    """Write catalog.parquet, {train,val,test}.parquet and latent.parquet under ``out``."""
    if size not in SIZES:
        raise ConvrecError(f"unknown size '{size}': choose one of {', '.join(SIZES)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConvrecError(f"{out}: is a file, expected a folder to write the synthetic world into")
    n_items, *n_convs = SIZES[size]
    # one stream per part: a split's content does not depend on the sizes of the others
    world_rng, *split_rngs = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(1 + len(SPLITS)))
    params = {"seed": seed, "size": size}
    catalog = make_catalog(world_rng, n_items)
    artifacts.write(catalog, catalog_path(out), artifacts.CATALOG, stage="data.synth", params=params)
    world = world_from_catalog(catalog)
    report = ImportReport(source=f"synthetic world (seed {seed}, {size})")
    report.counts["catalog items"] = n_items
    splits = {}
    for split, rng, n_conv in zip(SPLITS, split_rngs, n_convs, strict=True):
        samples, latent = _samples(rng, world, n_conv, split)
        artifacts.write(samples, split_path(out, split), artifacts.SAMPLES, stage="data.synth", params=params)
        splits[split] = (samples, latent)
        report.counts[f"{split} conversations"] = n_conv
        report.counts[f"{split} samples"] = samples.height
    latent_all = pl.concat([lat for _, lat in splits.values()])
    artifacts.write(latent_all, out / "latent.parquet", stage="data.synth", params={**params, "genres": world.genres})
    return report
