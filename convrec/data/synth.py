"""A deterministic synthetic movie world: the embedded default of convrec.

Items have generated titles covering the hard cases of matching (remakes sharing a title, sequels,
subtitles, leading articles, apostrophes, digits, ampersands), years 1950-2024, 1-3 genres, Zipf
popularity and a one-line description. Each conversation belongs to a user with a latent taste, a
sparse mixture over genres; the user reveals it through genre names, mood phrases and liked movies
(the `seen` items, mentioned with or without a year) in 1-3 turns. Ground truth is drawn with
probability ∝ popularity^POP_EXP · exp(TASTE_SCALE · taste·genres), never a seen item, so the text
carries a signal that popularity alone misses. `generate` measures it on the test split: a
popularity baseline, a bag-of-words reader of the text, and an oracle that knows the latent taste.

`latent.parquet` keeps each sample's taste (ordered as the `genres` provenance parameter) and item
ids; `world_from_catalog` + `answer_logits` rebuild the true answer distribution from the files
alone, for oracles and a synthetic teacher.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from convrec import artifacts
from convrec.catalog import Catalog, normalize_title
from convrec.data import SPLITS, catalog_path, split_path
from convrec.data.report import ImportReport
from convrec.errors import ConvrecError

# genre -> mood phrases (noun phrases a user says instead of the genre; none names another genre)
GENRES = {
    "action": ["something with big explosions", "an adrenaline rush", "non-stop fights and chases"],
    "comedy": ["something that makes me laugh", "a light, funny movie", "a silly feel-good watch"],
    "drama": ["something moving and serious", "a film that makes me cry", "a slow, emotional story"],
    "horror": ["something really scary", "a movie that gives me nightmares", "something creepy and gory"],
    "sci-fi": ["something set in space", "a film about aliens or time travel", "mind-bending future tech"],
    "romance": ["a love story", "something romantic for date night", "a sweet, swoony film"],
    "thriller": ["edge-of-my-seat suspense", "a tense mystery with twists", "a gripping cat-and-mouse plot"],
    "animation": ["a cartoon the whole family enjoys", "something hand-drawn and colourful", "an animated adventure"],
    "documentary": ["a true story about the real world", "something educational", "a film about real events"],
    "fantasy": ["dragons and magic", "a sword-and-sorcery epic", "a magical other world"],
    "crime": ["gangsters and heists", "a gritty detective story", "a mob story"],
    "western": ["cowboys and gunslingers", "a dusty frontier tale", "outlaws in the old west"],
}
KEYWORDS = {  # genre -> description keywords
    "action": ["car chases", "explosions", "a daring rescue"],
    "comedy": ["running gags", "an awkward wedding", "a hopeless plan"],
    "drama": ["a family secret", "grief", "a second chance"],
    "horror": ["a haunted house", "a masked killer", "an ancient curse"],
    "sci-fi": ["a starship", "time travel", "rogue robots"],
    "romance": ["a summer love", "a chance meeting", "a forbidden affair"],
    "thriller": ["a conspiracy", "a missing witness", "a ticking clock"],
    "animation": ["talking animals", "a brave little hero", "a magical journey"],
    "documentary": ["archive footage", "real interviews", "a true scandal"],
    "fantasy": ["a dragon", "a lost kingdom", "a wizard's quest"],
    "crime": ["a bank heist", "a corrupt cop", "a crime family"],
    "western": ["a showdown at noon", "cattle rustlers", "a lawless town"],
}
ADJ = [
    "Silent", "Crimson", "Lost", "Broken", "Golden", "Hidden", "Last", "Midnight", "Electric", "Wild", "Frozen",
    "Burning", "Secret", "Endless", "Savage", "Quiet", "Iron", "Velvet", "Distant", "Hollow", "Scarlet", "Northern",
    "Fallen", "Restless",
]  # fmt: skip
NOUN = [
    "Harbor", "Kingdom", "River", "Empire", "Garden", "Signal", "Horizon", "Storm", "Mirror", "Shadow", "Dream",
    "Frontier", "Circus", "Machine", "Island", "Promise", "Engine", "Orchard", "Compass", "Lantern", "Canyon",
    "Letter", "Station", "Crown", "Tide", "Forest", "Echo", "Winter", "Voyage", "Witness",
]  # fmt: skip
NAMES = ["Ocean", "Marlowe", "Rosie", "Jack", "Amelie", "Zoe", "Hank", "Lola", "Dmitri", "Ines", "Kofi", "Mae"]
PLACES = ["Paris", "Tokyo", "Texas", "the Desert", "Brooklyn", "Lagos", "the Alps", "Havana"]
SUBTITLES = ["Reckoning", "The Awakening", "Origins", "Last Light", "A New Dawn", "Homecoming", "The Return"]
NUMBERS = ["Three", "Seven", "Eleven", "12", "100", "Two", "Five", "1000", "21"]

SIZES = {  # catalog items, train / val / test conversations (~1.2 samples each)
    "small": (360, 1250, 170, 250),
    "medium": (2500, 8500, 850, 1250),
}
POP_EXP = 0.35  # popularity^POP_EXP: weak, so the taste dominates the answers
TASTE_SCALE = 7.0
MULTI_ANSWER = 0.2  # share of conversations answered by two users (two samples, one conversation)
REMAKE_GAP = 8  # years between items sharing a title: far outside the matching tolerance of 2
YEARS = (1950, 2024)

OPENERS = [
    "Hi! Can you recommend some movies?",
    "I'm looking for something to watch tonight.",
    "Hey, I need a few movie suggestions.",
    "Movie night this weekend, any ideas?",
    "Help me find a film to watch.",
    "Bored on a Sunday, what should I put on?",
    "I want to watch a movie with friends.",
    "Looking for recommendations!",
]
GENRE_ONE = [
    "I'm really into {g} movies.",
    "My favourite genre is {g}.",
    "Mostly {g} for me.",
    "Not sure, but I usually like {g}.",
    "I've been on a {g} kick lately.",
    "Anything {g} would be great.",
    "I watch a lot of {g}.",
]
GENRE_TWO = [
    "I love {g1}, and sometimes {g2}.",
    "Give me {g1} or {g2}, please.",
    "I'm into {g1} and {g2} films.",
    "A mix of {g1} and {g2} would be ideal.",
    "Mostly {g1}, but I don't mind some {g2}.",
]
MOOD_ONE = [
    "I want {m}.",
    "I'm in the mood for {m}.",
    "Looking for {m} tonight.",
    "Ideally {m}.",
]
MOOD_TWO = [
    "I'd like {m1} or {m2}.",
    "In the mood for {m1}, maybe with a bit of {m2}.",
    "Either {m1} or {m2} would be nice.",
]
LIKED = [
    "I loved {liked}.",
    "Something like {liked}.",
    "Anything similar to {liked}?",
    "Lately I've been watching films like {liked}.",
    "I recently watched {liked} and had a great time.",
    "Think {liked}.",
    "I've already seen {liked}, so something else in that spirit.",
    "Something in the vein of {liked} would be great.",
    "All-time favourites: {liked}.",
]
ASK_TASTE = [
    "Sure! What kind of movies do you like?",
    "Happy to help. Any favourite genres?",
    "What are you in the mood for?",
    "Of course. What sort of film are you after?",
]
ASK_LIKED = [
    "Got it. Any movies you loved recently?",
    "Nice. Which films have you enjoyed?",
    "Any favourites I should know about?",
]
ASK_ANY = ["Sure, tell me more about your taste.", "Happy to help! What do you usually enjoy?", *ASK_TASTE[:2]]
CLOSERS = [
    "What would you recommend?",
    "Any suggestions?",
    "What should I watch?",
    "Please recommend a few.",
    "Can you give me some recommendations?",
    "What do you suggest?",
]


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


def _article(word: str) -> str:
    return "An" if word[0].lower() in "aeiou" else "A"


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x", "o")) else "s")


def _titles(rng: np.random.Generator, n: int) -> list[tuple[str, int]]:
    """n (title, year) pairs, unique per normalised title and year, with remakes and sequels."""
    out: list[tuple[str, int]] = []
    years_of: dict[str, list[int]] = {}  # normalised title -> years taken

    def pick(words: list[str], k: int = 1) -> list[str]:
        return [words[i] for i in rng.choice(len(words), size=k, replace=False)]

    def fresh() -> str:
        (adj,), (n1, n2) = pick(ADJ), pick(NOUN, 2)
        pattern = int(rng.integers(9))
        return [
            f"The {adj} {n1}",
            f"{adj} {n1}",
            f"{n1} of the {n2}",
            f"{pick(NAMES)[0]}'s {n1}",
            f"{n1}: {pick(SUBTITLES)[0]}",
            f"{_article(n1)} {n1} in {pick(PLACES)[0]}",
            f"{pick(NUMBERS)[0]} {_plural(n1)}",
            f"{n1} & {n2}",
            f"The {n1}",
        ][pattern]

    while len(out) < n:
        r = rng.random()
        if out and r < 0.05:  # remake: the same title, years apart from every namesake
            title, year = out[int(rng.integers(len(out)))]
            new_title, new_year = title, year + int(rng.integers(REMAKE_GAP, 40))
        elif out and r < 0.11:  # sequel of a plain title
            title, year = out[int(rng.integers(len(out)))]
            if ":" in title or title[-1].isdigit() or title.endswith(" II"):
                continue
            new_title, new_year = title + str(rng.choice([" 2", " II", ": Part Two"])), year + int(rng.integers(2, 7))
            if normalize_title(new_title) in years_of:
                continue
        else:
            new_title, new_year = fresh(), int(rng.integers(YEARS[0], YEARS[1] + 1))
            if normalize_title(new_title) in years_of:  # fresh titles stay distinct; remakes are deliberate
                continue
        taken = years_of.setdefault(normalize_title(new_title), [])
        if new_year > YEARS[1] or any(abs(new_year - y) < REMAKE_GAP for y in taken):
            continue
        taken.append(new_year)
        out.append((new_title, new_year))
    return out


def _description(rng: np.random.Generator, genres: list[str]) -> str:
    label = genres[0] if len(genres) == 1 else f"{', '.join(genres[:-1])} and {genres[-1]}"
    nouns = [_plural(NOUN[i]).lower() for i in rng.choice(len(NOUN), size=2, replace=False)]
    kws = [KEYWORDS[g][int(rng.integers(3))] for g in genres[:2]]
    return f"{_article(label)} {label} film about {nouns[0]} and {nouns[1]}, with {' and '.join(kws)}."


def make_catalog(rng: np.random.Generator, n_items: int) -> pl.DataFrame:
    genres = list(GENRES)
    titles = _titles(rng, n_items)
    item_genres = []
    for _ in range(n_items):
        k = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
        item_genres.append([genres[c] for c in sorted(rng.choice(len(genres), size=k, replace=False))])
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9  # Zipf, assigned to items at random
    pop = pop[rng.permutation(n_items)] / pop.sum() * 1000
    return pl.DataFrame(
        {
            "item_id": [f"m{i:05d}" for i in range(n_items)],
            "title": [t for t, _ in titles],
            "year": [y for _, y in titles],
            "genres": item_genres,
            "description": [_description(rng, gs) for gs in item_genres],
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


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def _choice(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _taste_statement(rng: np.random.Generator, world: World, taste: np.ndarray) -> str:
    """One sentence naming the strongest genre, or the two strongest, by name or by mood."""
    order = [int(j) for j in np.argsort(-taste, kind="stable") if taste[j] > 0]
    named = order[:2] if len(order) > 1 and rng.random() < 0.5 else order[:1]
    gs = [world.genres[j] for j in named]
    moods = [_choice(rng, GENRES[g]) for g in gs]
    if rng.random() < 0.5:
        if len(gs) == 1:
            return _choice(rng, GENRE_ONE).format(g=gs[0])
        return _choice(rng, GENRE_TWO).format(g1=gs[0], g2=gs[1])
    if len(gs) == 1:
        return _choice(rng, MOOD_ONE).format(m=moods[0])
    return _choice(rng, MOOD_TWO).format(m1=moods[0], m2=moods[1])


def _conversation(rng: np.random.Generator, world: World, taste: np.ndarray, liked: list[int]) -> tuple[list, list]:
    """Messages revealing the taste, and the seen items (the liked ones) as the text names them."""
    seen, mentions = [], []
    for r in liked:
        title, year = world.titles[r], world.years[r]
        # a year-less mention of a remake would name (and hide as seen) all its namesakes
        with_year = world.shared_title[r] or rng.random() < 0.6
        mentions.append(f"{title} ({year})" if with_year else title)
        seen.append({"title": title, "year": year if with_year else None})
    facts = []  # (kind, sentence)
    if not liked or rng.random() < 0.85:
        facts.append(("taste", _taste_statement(rng, world, taste)))
    if liked:
        facts.append(("liked", _choice(rng, LIKED).format(liked=_join(mentions))))
    if rng.random() < 0.5:
        facts.reverse()
    opener, closer = _choice(rng, OPENERS), _choice(rng, CLOSERS)
    turns = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    if turns == 1:
        first = [opener] if rng.random() < 0.6 else []
        messages = [{"role": "user", "content": " ".join([*first, *(s for _, s in facts), closer])}]
    elif turns == 2 or len(facts) == 1:
        messages = [
            {"role": "user", "content": opener},
            {"role": "assistant", "content": _choice(rng, ASK_ANY)},
            {"role": "user", "content": " ".join([*(s for _, s in facts), closer])},
        ]
    else:  # the assistant asks for each fact in turn
        messages = [{"role": "user", "content": opener}]
        for i, (kind, sentence) in enumerate(facts):
            messages.append({"role": "assistant", "content": _choice(rng, ASK_TASTE if kind == "taste" else ASK_LIKED)})
            messages.append({"role": "user", "content": f"{sentence} {closer}" if i == len(facts) - 1 else sentence})
    return messages, seen


def _samples(rng: np.random.Generator, world: World, n_conv: int, split: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    ids = world.catalog["item_id"].to_list()
    rows, latent = [], []
    for c in range(n_conv):
        taste = _sample_taste(rng, len(world.genres))
        p = item_probabilities(world, taste)
        liked = _draw(rng, p, int(rng.choice([0, 1, 2, 3], p=[0.2, 0.4, 0.28, 0.12])), [])
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


def _rank(world: World, cat: Catalog, samples: pl.DataFrame, tastes: np.ndarray, n: int = 20) -> pl.DataFrame:
    """Predictions: the n unseen items most likely under the answer model for each taste."""
    from convrec.baselines import predictions_frame, resolve_rows, top_n_excluding

    rows = top_n_excluding(answer_logits(world, tastes), resolve_rows(cat, samples["seen"]), n)
    return predictions_frame(samples["sample_id"].to_list(), rows, cat)


def read_tastes(world: World, cat: Catalog, samples: pl.DataFrame) -> np.ndarray:
    """Taste estimated from the text alone: genre names and mood phrases the user wrote, plus the
    genres of the movies they mentioned. A floor for what a model reading the text can reach."""
    from convrec.baselines import resolve_rows

    patterns = [re.compile("|".join(re.escape(s) for s in [g, *moods]), re.IGNORECASE) for g, moods in GENRES.items()]
    tastes = np.zeros((samples.height, len(world.genres)))
    mentioned = resolve_rows(cat, samples["seen"])
    for i, msgs in enumerate(samples["messages"].to_list()):
        text = " ".join(m["content"] for m in msgs if m["role"] == "user")
        tastes[i] = [len(p.findall(text)) for p in patterns]
        tastes[i] += 0.5 * world.genre_matrix[mentioned[i]].sum(axis=0)
    return tastes / np.maximum(tastes.sum(axis=1, keepdims=True), 1e-9)


def signal_note(world: World, train: pl.DataFrame, test: pl.DataFrame, test_latent: pl.DataFrame) -> str:
    """Test NDCG@20 (paper convention) of popularity, a text reader and the latent-taste oracle."""
    from convrec.baselines import popularity
    from convrec.evaluation import evaluate

    cat = Catalog(world.catalog)
    runs = {
        "popularity": popularity.recommend(train, test, cat),
        "text reader": _rank(world, cat, test, read_tastes(world, cat, test)),
        "taste oracle": _rank(world, cat, test, np.array(test_latent["taste"].to_list())),
    }
    ndcg = {name: evaluate(preds, test, cat)[0]["ndcg@20"] for name, preds in runs.items()}
    return "signal: test NDCG@20 " + " vs ".join(f"{name} {v:.4f}" for name, v in ndcg.items())


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
    report.notes.append(signal_note(world, splits["train"][0], *splits["test"]))
    return report
