"""A deterministic synthetic movie world: the embedded default of convrec.

Items have generated titles (remakes, sequels, subtitles, leading articles, apostrophes, digits,
ampersands), years, 1-3 genres, Zipf popularity and a one-line description. Each conversation
belongs to a user with a latent taste (a sparse mixture over genres); the user reveals it in the
text through genre names, mood phrases and liked movies (the `seen` items, with or without a
year). Ground truth is drawn with probability ∝ popularity^POP_EXP · exp(TASTE_SCALE · taste·genres),
never a seen item. So the text carries a learnable signal that popularity alone misses; `generate`
measures it as the gap between a popularity baseline and an oracle that knows the latent taste.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from convrec import artifacts
from convrec.catalog import Catalog, normalize_title
from convrec.data import SPLITS, catalog_path, split_path
from convrec.data.report import ImportReport
from convrec.errors import ConvrecError

GENRES = {  # genre -> mood phrases a user may say instead of the genre name
    "action": ["something with big explosions", "an adrenaline rush", "non-stop fights and chases"],
    "comedy": ["something that makes me laugh", "a light, funny movie", "a silly feel-good watch"],
    "drama": ["something moving and serious", "a film that makes me cry", "a slow, emotional story"],
    "horror": ["something really scary", "a movie that gives me nightmares", "creepy and terrifying"],
    "sci-fi": ["space and future technology", "aliens or time travel", "mind-bending science"],
    "romance": ["a love story", "something romantic for date night", "a sweet, swoony film"],
    "thriller": ["edge-of-my-seat suspense", "a tense mystery with twists", "a gripping cat-and-mouse plot"],
    "animation": ["a cartoon the whole family enjoys", "beautiful hand-drawn animation", "an animated adventure"],
    "documentary": ["a true story about the real world", "something educational and real", "a film about real events"],
    "fantasy": ["dragons and magic", "a sword-and-sorcery epic", "a magical other world"],
    "crime": ["gangsters and heists", "a gritty detective story", "a mob drama"],
    "western": ["cowboys and gunslingers", "a dusty frontier tale", "outlaws in the old west"],
}
ADJ = [
    "Silent",
    "Crimson",
    "Lost",
    "Broken",
    "Golden",
    "Hidden",
    "Last",
    "Midnight",
    "Electric",
    "Wild",
    "Frozen",
    "Burning",
    "Secret",
    "Endless",
    "Savage",
    "Quiet",
    "Iron",
    "Velvet",
    "Distant",
    "Hollow",
    "Scarlet",
    "Northern",
    "Fallen",
    "Restless",
]
NOUN = [
    "Harbor",
    "Kingdom",
    "River",
    "Empire",
    "Garden",
    "Signal",
    "Horizon",
    "Storm",
    "Mirror",
    "Shadow",
    "Dream",
    "Frontier",
    "Circus",
    "Machine",
    "Island",
    "Promise",
    "Engine",
    "Orchard",
    "Compass",
    "Lantern",
    "Canyon",
    "Letter",
    "Station",
    "Crown",
    "Tide",
    "Forest",
    "Echo",
    "Winter",
    "Voyage",
]
NAMES = ["Ocean", "Marlowe", "Rosie", "Jack", "Amelie", "Zoe", "Hank", "Lola", "Dmitri", "Ines", "Kofi", "Mae"]
PLACES = ["Paris", "Tokyo", "Texas", "the Desert", "Brooklyn", "Lagos", "the Alps", "Havana"]
SUBTITLES = ["Reckoning", "The Awakening", "Origins", "Last Light", "A New Dawn", "Homecoming", "The Return"]
NUMBERS = ["Three", "Seven", "12", "100", "Two", "Five", "1000", "21"]

SIZES = {  # items, train / val / test conversations (~1.2 samples each)
    "small": (360, 1250, 170, 250),
    "medium": (2500, 8500, 850, 1250),
}
POP_EXP = 0.35
TASTE_SCALE = 7.0
MULTI_ANSWER = 0.2  # share of conversations answered by two users (two samples)

OPENERS = [
    "Hi! Can you recommend some movies?",
    "I'm looking for something to watch tonight.",
    "Hey, I need a few movie suggestions.",
    "Movie night this weekend, any ideas?",
    "Help me find a film to watch.",
    "",
]
TASTE_LINES = [
    "I'm really into {g1} movies.",
    "I love {g1}, and sometimes {g2}.",
    "I want {m1}.",
    "In the mood for {m1}, maybe with a bit of {g2}.",
    "Mostly {g1} for me. Something like {liked}.",
    "I enjoyed {liked} a lot. Looking for {m1}.",
    "My favourite genre is {g1}.",
    "I'd like {m1} or {m2}.",
    "Give me {g1} or {g2}, please.",
    "Not sure, but I usually like {g1}.",
    "Lately I've been watching {g1} films like {liked}.",
    "Anything similar to {liked}? I love {g1}.",
    "{liked} is one of my all-time favourites.",
    "I want {m1}; {liked} was perfect.",
    "Could you suggest {g1} titles? Think {liked}.",
    "Something in the vein of {liked} would be great.",
]
ASSISTANT_QUESTIONS = [
    "Sure! What kind of movies do you like?",
    "Happy to help. Any favourite genres or films?",
    "Of course. What have you enjoyed recently?",
    "What are you in the mood for?",
]
CLOSERS = [
    "What would you recommend?",
    "Any suggestions?",
    "What should I watch?",
    "Please recommend a few.",
    "",
]


@dataclass
class World:
    catalog: pl.DataFrame
    genre_matrix: np.ndarray  # items x genres, rows sum to 1
    popularity: np.ndarray
    shared_title: np.ndarray  # bool per item: another item (a remake) has the same normalised title


def _titles(rng: np.random.Generator, n: int) -> list[tuple[str, int]]:
    """Unique (title, year) pairs with remakes and sequels mixed in."""
    out: list[tuple[str, int]] = []
    keys: set[tuple[str, int]] = set()
    norms: set[str] = set()

    def add(title: str, year: int) -> bool:
        key = (normalize_title(title), year)
        if key in keys or not (1950 <= year <= 2024):
            return False
        keys.add(key)
        norms.add(key[0])
        out.append((title, year))
        return True

    patterns = [
        lambda: f"The {rng.choice(ADJ)} {rng.choice(NOUN)}",
        lambda: f"{rng.choice(ADJ)} {rng.choice(NOUN)}",
        lambda: f"{rng.choice(NOUN)} of the {rng.choice(NOUN)}",
        lambda: f"{rng.choice(NAMES)}'s {rng.choice(NOUN)}",
        lambda: f"{rng.choice(NOUN)}: {rng.choice(SUBTITLES)}",
        lambda: f"A {rng.choice(NOUN)} in {rng.choice(PLACES)}",
        lambda: f"{rng.choice(NUMBERS)} {rng.choice(NOUN)}s",
        lambda: f"{rng.choice(NOUN)} & {rng.choice(NOUN)}",
        lambda: f"The {rng.choice(NOUN)}",
    ]
    while len(out) < n:
        r = rng.random()
        if out and r < 0.04:  # remake: same title, at least a decade later
            title, year = out[rng.integers(len(out))]
            add(title, year + int(rng.integers(10, 40)))
        elif out and r < 0.10:  # sequel
            title, year = out[rng.integers(len(out))]
            if ":" not in title and not title[-1].isdigit():
                suffix = rng.choice([" 2", " II", ": Part Two"])
                add(title + suffix, year + int(rng.integers(2, 6)))
        else:
            title = patterns[rng.integers(len(patterns))]()
            if normalize_title(title) not in norms:  # fresh titles stay distinct; remakes are deliberate
                add(title, int(rng.integers(1950, 2025)))
    return out


def _plural(noun: str) -> str:
    noun = noun.lower()
    return noun + ("es" if noun.endswith(("s", "sh", "ch")) else "s")


def make_world(rng: np.random.Generator, n_items: int) -> World:
    genres = list(GENRES)
    titles = _titles(rng, n_items)
    g = np.zeros((n_items, len(genres)))
    item_genres = []
    for i in range(n_items):
        k = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
        chosen = sorted(rng.choice(len(genres), size=k, replace=False).tolist())
        g[i, chosen] = 1.0 / k
        item_genres.append([genres[c] for c in chosen])
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    pop = pop[rng.permutation(n_items)]
    pop = pop / pop.sum() * 1000
    descriptions = [
        f"A {'/'.join(gs)} film about {_plural(rng.choice(NOUN))} and {_plural(rng.choice(NOUN))}, "
        f"{rng.choice(GENRES[gs[0]])}."
        for gs in item_genres
    ]
    catalog = pl.DataFrame(
        {
            "item_id": [f"m{i:05d}" for i in range(n_items)],
            "title": [t for t, _ in titles],
            "year": [y for _, y in titles],
            "genres": item_genres,
            "description": descriptions,
            "popularity": pop.round(4),
        }
    )
    norms = [normalize_title(t) for t, _ in titles]
    counts = {n: norms.count(n) for n in set(norms)}
    return World(catalog, g, pop, np.array([counts[n] > 1 for n in norms]))


def item_probabilities(world: World, taste: np.ndarray) -> np.ndarray:
    """The true answer distribution of a user with this taste (before removing seen items)."""
    logits = POP_EXP * np.log(world.popularity) + TASTE_SCALE * (world.genre_matrix @ taste)
    p = np.exp(logits - logits.max())
    return p / p.sum()


def _sample_taste(rng: np.random.Generator, n_genres: int) -> np.ndarray:
    k = int(rng.choice([1, 2], p=[0.5, 0.5]))
    chosen = rng.choice(n_genres, size=k, replace=False)
    taste = np.zeros(n_genres)
    taste[chosen] = rng.dirichlet(np.ones(k) * 2.0)
    return taste


def _conversation(rng: np.random.Generator, world: World, taste: np.ndarray, liked: list[int]) -> tuple[list, list]:
    """Messages revealing the taste, and the seen items with the year as the text gave it."""
    genres = list(GENRES)
    order = np.argsort(-taste)
    g1, g2 = genres[order[0]], genres[order[1] if taste[order[1]] > 0 else order[0]]
    cat = world.catalog
    seen = []
    liked_texts = []
    for r in liked:
        title, year = cat["title"][r], cat["year"][r]
        # a remake's title alone would also name its namesakes (and hide them as "seen"): give the year
        with_year = rng.random() < 0.6 or world.shared_title[r]
        liked_texts.append(f"{title} ({year})" if with_year else title)
        seen.append({"title": title, "year": year if with_year else None})
    liked_text = " and ".join(liked_texts) if liked_texts else "the classics"
    line = str(rng.choice(TASTE_LINES))
    if not liked_texts:
        line = (
            line.replace("{liked}", "nothing in particular")
            if "{liked}" in line and "{g1}" in line
            else ("I like {g1}." if "{liked}" in line else line)
        )
    text = line.format(g1=g1, g2=g2, m1=rng.choice(GENRES[g1]), m2=rng.choice(GENRES[g2]), liked=liked_text)
    opener, closer = str(rng.choice(OPENERS)), str(rng.choice(CLOSERS))
    if rng.random() < 0.4:  # two turns: the assistant asks first
        messages = [
            {"role": "user", "content": opener or "Hi, I want to watch a movie."},
            {"role": "assistant", "content": str(rng.choice(ASSISTANT_QUESTIONS))},
            {"role": "user", "content": f"{text} {closer}".strip()},
        ]
    else:
        messages = [{"role": "user", "content": " ".join(s for s in (opener, text, closer) if s)}]
    return messages, seen


def _draw(rng: np.random.Generator, p: np.ndarray, k: int, exclude: list[int]) -> list[int]:
    p = p.copy()
    p[exclude] = 0.0
    p /= p.sum()
    return rng.choice(len(p), size=k, replace=False, p=p).tolist()


def _samples(rng: np.random.Generator, world: World, n_conv: int, split: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    cat = world.catalog
    rows, latent = [], []
    for c in range(n_conv):
        taste = _sample_taste(rng, len(GENRES))
        p = item_probabilities(world, taste)
        liked = _draw(rng, p, int(rng.choice([0, 1, 2, 3], p=[0.15, 0.4, 0.3, 0.15])), [])
        messages, seen = _conversation(rng, world, taste, liked)
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
                    "ground_truth": [{"title": cat["title"][r], "year": cat["year"][r]} for r in gt],
                }
            )
            latent.append(
                {"sample_id": sid, "taste": taste.tolist(), "ground_truth_item_ids": [cat["item_id"][r] for r in gt]}
            )
    return pl.DataFrame(rows, schema=artifacts.SAMPLES.required), pl.DataFrame(latent)


def oracle_predictions(world: World, samples: pl.DataFrame, latent: pl.DataFrame, n: int = 20) -> pl.DataFrame:
    """Rank unseen items by the true answer distribution: the ceiling a model can approach."""
    from convrec.baselines import predictions_frame, resolve_rows, top_n_excluding

    cat = Catalog(world.catalog)
    tastes = np.array(latent["taste"].to_list())
    scores = np.stack([item_probabilities(world, t) for t in tastes])
    rows = top_n_excluding(scores, resolve_rows(cat, samples["seen"]), n)
    return predictions_frame(samples["sample_id"].to_list(), rows, cat)


def generate(out: str | Path, *, seed: int = 0, size: str = "small") -> ImportReport:
    """Write catalog.parquet, {train,val,test}.parquet and latent.parquet under ``out``."""
    if size not in SIZES:
        raise ConvrecError(f"unknown size '{size}': choose one of {', '.join(SIZES)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConvrecError(f"{out}: is a file, expected a folder to write the synthetic world into")
    n_items, *n_convs = SIZES[size]
    rng = np.random.default_rng(seed)
    world = make_world(rng, n_items)
    params = {"seed": seed, "size": size}
    artifacts.write(world.catalog, catalog_path(out), artifacts.CATALOG, stage="data.synth", params=params)
    report = ImportReport(source=f"synthetic world (seed {seed}, {size})")
    report.counts["catalog items"] = n_items
    splits = {}
    for split, n_conv in zip(SPLITS, n_convs, strict=True):
        samples, latent = _samples(rng, world, n_conv, split)
        artifacts.write(samples, split_path(out, split), artifacts.SAMPLES, stage="data.synth", params=params)
        splits[split] = (samples, latent)
        report.counts[f"{split} conversations"] = n_conv
        report.counts[f"{split} samples"] = samples.height
    latent_all = pl.concat([lat for _, lat in splits.values()])
    artifacts.write(latent_all, out / "latent.parquet", stage="data.synth", params=params)
    report.notes.append(signal_note(world, *splits["train"], *splits["test"]))
    return report


def signal_note(world: World, train: pl.DataFrame, _train_latent, test: pl.DataFrame, test_latent) -> str:
    """How far popularity stays below the taste oracle on test (NDCG@20, paper convention)."""
    from convrec.baselines import popularity
    from convrec.evaluation import evaluate

    cat = Catalog(world.catalog)
    pop, _ = evaluate(popularity.recommend(train, test, cat), test, cat)
    oracle, _ = evaluate(oracle_predictions(world, test, test_latent), test, cat)
    return (
        f"signal: test NDCG@20 popularity {pop['ndcg@20']:.4f} vs taste oracle {oracle['ndcg@20']:.4f} "
        f"(Recall@20 {pop['recall@20']:.4f} vs {oracle['recall@20']:.4f})"
    )
