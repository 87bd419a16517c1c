"""The words of the synthetic world: titles, descriptions and the conversations users write.

Titles cover the hard cases of matching (remakes sharing a title, sequels, subtitles, leading
articles, apostrophes, digits, ampersands); a user reveals a latent taste through genre names,
mood phrases and liked movies in 1-3 turns. `convrec.data.synth` draws the world and the answers.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from convrec.catalog import normalize_title


class Words(Protocol):
    """What the text needs of `convrec.data.synth.World` (a protocol, so this module imports nothing back)."""

    genres: list[str]
    titles: list[str]
    years: list[int]
    shared_title: np.ndarray


REMAKE_GAP = 8  # years between items sharing a title: far outside the matching tolerance of 2
YEARS = (1950, 2024)

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


def article(word: str) -> str:
    return "An" if word[0].lower() in "aeiou" else "A"


def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x", "o")) else "s")


def titles(rng: np.random.Generator, n: int) -> list[tuple[str, int]]:
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
            f"{article(n1)} {n1} in {pick(PLACES)[0]}",
            f"{pick(NUMBERS)[0]} {plural(n1)}",
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


def description(rng: np.random.Generator, genres: list[str]) -> str:
    label = genres[0] if len(genres) == 1 else f"{', '.join(genres[:-1])} and {genres[-1]}"
    nouns = [plural(NOUN[i]).lower() for i in rng.choice(len(NOUN), size=2, replace=False)]
    kws = [KEYWORDS[g][int(rng.integers(3))] for g in genres[:2]]
    return f"{article(label)} {label} film about {nouns[0]} and {nouns[1]}, with {' and '.join(kws)}."


def join_names(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def choice(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def taste_statement(rng: np.random.Generator, world: Words, taste: np.ndarray) -> str:
    """One sentence naming the strongest genre, or the two strongest, by name or by mood."""
    order = [int(j) for j in np.argsort(-taste, kind="stable") if taste[j] > 0]
    named = order[:2] if len(order) > 1 and rng.random() < 0.5 else order[:1]
    gs = [world.genres[j] for j in named]
    moods = [choice(rng, GENRES[g]) for g in gs]
    if rng.random() < 0.5:
        if len(gs) == 1:
            return choice(rng, GENRE_ONE).format(g=gs[0])
        return choice(rng, GENRE_TWO).format(g1=gs[0], g2=gs[1])
    if len(gs) == 1:
        return choice(rng, MOOD_ONE).format(m=moods[0])
    return choice(rng, MOOD_TWO).format(m1=moods[0], m2=moods[1])


def conversation(rng: np.random.Generator, world: Words, taste: np.ndarray, liked: list[int]) -> tuple[list, list]:
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
        facts.append(("taste", taste_statement(rng, world, taste)))
    if liked:
        facts.append(("liked", choice(rng, LIKED).format(liked=join_names(mentions))))
    if rng.random() < 0.5:
        facts.reverse()
    opener, closer = choice(rng, OPENERS), choice(rng, CLOSERS)
    turns = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    if turns == 1:
        first = [opener] if rng.random() < 0.6 else []
        messages = [{"role": "user", "content": " ".join([*first, *(s for _, s in facts), closer])}]
    elif turns == 2 or len(facts) == 1:
        messages = [
            {"role": "user", "content": opener},
            {"role": "assistant", "content": choice(rng, ASK_ANY)},
            {"role": "user", "content": " ".join([*(s for _, s in facts), closer])},
        ]
    else:  # the assistant asks for each fact in turn
        messages = [{"role": "user", "content": opener}]
        for i, (kind, sentence) in enumerate(facts):
            messages.append({"role": "assistant", "content": choice(rng, ASK_TASTE if kind == "taste" else ASK_LIKED)})
            messages.append({"role": "user", "content": f"{sentence} {closer}" if i == len(facts) - 1 else sentence})
    return messages, seen
