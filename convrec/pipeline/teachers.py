"""Teachers: who writes the free-text lists that remap grounds in the catalog.

- ``openai``: any chat model behind the OpenAI-compatible client, asked with the one prompt builder.
  An answer with no parseable list (prose, a refusal) is asked again, up to ``LIST_REASKS`` times,
  each time as a new request quoting the answer and the format (cached like any request, so a rerun
  re-asks from the cache and pays nothing); what still has no list is reported per conversation,
  and remap marks those samples ``unparseable``: reflect and adjust carry the mark into the SFT
  set, and sft leaves those rows out (eval keeps them: they are the teacher's own failures).
- ``cooc``: the co-occurrence baseline written out as text (offline). On the train split it is
  fitted k-fold, so a conversation's list never comes from a model that saw its own answer.
- ``synthetic``: on a synthetic world, an imitation of a real LLM. It believes a noisy version of
  the user's latent taste, over-weights popular items, and writes its list the way LLMs do:
  numbering, preambles, misspellings, missing or wrong years, "X, The", invented titles that are
  in no catalog, now and then a refusal with no list at all. It records the catalog item it meant
  on every line, so remap's recovery can be measured.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from convrec.catalog import Catalog, normalize_title
from convrec.errors import ConvrecError
from convrec.listfmt import format_item, parse_lines
from convrec.llm.client import LLMClient, LLMConfig, Usage, require_all
from convrec.prompts import build_messages, reask_messages

OFFLINE_TEACHERS = ("cooc", "synthetic")
LIST_REASKS = 2  # re-asks of an LLM answer with no parseable list (as reflect's --judge-retries)


@dataclass
class TeacherOutput:
    texts: list[str]  # one raw answer per conversation
    meant: list[list[str | None]] | None = None  # synthetic only: item_id meant by each written line
    usage: Usage | None = None
    reasked: int = 0  # LLM teachers: answers with no list that were asked again
    unparseable: list[str] = field(default_factory=list)  # conversation ids still without a list after that


def has_list(text: str | None) -> bool:
    """Whether an answer has at least one line that parses as an item (what remap can ground)."""
    return any(ln.item is not None for ln in parse_lines(text))


def answer(
    name: str,
    convs: pl.DataFrame,
    *,
    data: Path,
    split: str,
    catalog: Catalog,
    n: int,
    seed: int,
    llm: LLMConfig | None = None,
) -> TeacherOutput:
    """Lists for each conversation row of ``convs`` (columns conversation_id, messages, seen)."""
    if name == "cooc":
        return _cooc(convs, data=data, split=split, catalog=catalog, n=n, seed=seed)
    if name == "synthetic":
        return _synthetic(convs, data=data, catalog=catalog, n=n, seed=seed)
    if llm is None:
        raise ConvrecError(f"teacher '{name}' is a model name and needs the LLM client settings")
    return _llm(name, convs, n, llm)


def _llm(name: str, convs: pl.DataFrame, n: int, llm: LLMConfig, reasks: int = LIST_REASKS) -> TeacherOutput:
    """Ask every conversation; re-ask (bounded) the answers with no list, as a continuation of the chat."""
    client = LLMClient(llm)
    requests = [build_messages(m, n) for m in convs["messages"].to_list()]
    texts = [""] * len(requests)
    pending, reasked = list(range(len(requests))), 0
    for attempt in range(reasks + 1):
        desc = f"teacher {name}" + (f" (re-ask {attempt})" if attempt else "")
        answers = client.complete_many([requests[i] for i in pending], desc=desc)
        require_all(answers, client.usage, f"teacher {name}")
        again = []
        for i, a in zip(pending, answers, strict=True):
            texts[i] = a.text or ""
            if not has_list(texts[i]) and attempt < reasks:
                requests[i] = reask_messages(requests[i], texts[i], n)
                again.append(i)
        reasked += len(again)
        pending = again
        if not pending:
            break
    ids = convs["conversation_id"].to_list()
    bad = [ids[i] for i, t in enumerate(texts) if not has_list(t)]
    return TeacherOutput(texts, usage=client.usage, reasked=reasked, unparseable=bad)


def _cooc(convs: pl.DataFrame, *, data: Path, split: str, catalog: Catalog, n: int, seed: int) -> TeacherOutput:
    from convrec.baselines import cooc
    from convrec.data import load_split

    train = load_split(data, "train")
    if split != "train":
        preds = cooc.recommend(train, convs, catalog, n=n)
        return TeacherOutput(preds["text"].to_list())
    # k-fold by conversation: the teacher never saw the answers of the conversation it answers
    folds = 5
    fold_of = {c: zlib.crc32(f"{seed}:{c}".encode()) % folds for c in train["conversation_id"].unique().to_list()}
    train = train.with_columns(pl.col("conversation_id").replace_strict(fold_of, return_dtype=pl.Int64).alias("_fold"))
    convs = convs.with_columns(
        pl.col("conversation_id")
        .map_elements(lambda c: fold_of.get(c, zlib.crc32(f"{seed}:{c}".encode()) % folds), return_dtype=pl.Int64)
        .alias("_fold")
    )
    texts: dict[str, str] = {}
    for f in range(folds):
        part = convs.filter(pl.col("_fold") == f)
        if part.height == 0:
            continue
        preds = cooc.recommend(train.filter(pl.col("_fold") != f).drop("_fold"), part.drop("_fold"), catalog, n=n)
        texts.update(zip(part["conversation_id"].to_list(), preds["text"].to_list(), strict=True))
    return TeacherOutput([texts[c] for c in convs["conversation_id"].to_list()])


# -- synthetic ---------------------------------------------------------------------------------
# What the teacher knows, calibrated once on the small world's validation split (seed 0) against
# the world's taste oracle: an LLM-class teacher, as far above co-occurrence as GPT-4's zero-shot
# lists are on ReDIAL's test rows (Recall@20 0.305 vs about 0.21, 1.4x). The items it meant (what
# remap recovers, 99 % of lines) reach Recall@20 0.660 against co-occurrence's 0.475 (1.39x; the
# taste oracle itself 0.699 with the same writing failures). The old teacher (noise 0.35, Gumbel
# scale 1: it sampled its list instead of ranking its belief) reached 0.42, below co-occurrence.
TASTE_NOISE = 0.15  # share of the believed taste that is the teacher's own guess
POP_BIAS = 0.6  # extra log-popularity weight: LLMs over-recommend the famous
GUMBEL = 0.2  # scale of the Gumbel noise on its ranking (1 = sampling from its belief, 0 = argmax)
P_REFUSAL = 0.02
P_INVENTED = 0.08
P_MISSPELL = 0.15
P_ARTICLE = 0.5  # of titles starting with "The"
P_NO_YEAR = 0.08
P_YEAR_OFF = 0.12  # half within the metrics' tolerance, half beyond it
REFUSALS = [
    "I'm sorry, but I can't browse a catalog right now. Could you tell me more about what you like?",
    "There are so many great options depending on your mood, so it is hard to pick just a few.",
]
PREAMBLES = ["Here are some movies you might enjoy:", "Sure! Based on what you said, try these:", ""]


def _misspell(rng: np.random.Generator, title: str) -> str:
    words = title.split(" ")
    long = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not long:
        return title
    i = long[int(rng.integers(len(long)))]
    w = list(words[i])
    j = int(rng.integers(1, len(w) - 1))
    kind = int(rng.integers(3))
    if kind == 0:
        w[j], w[j + 1] = w[j + 1], w[j]  # swap
    elif kind == 1:
        del w[j]  # drop
    else:
        w.insert(j, w[j])  # double
    words[i] = "".join(w)
    return " ".join(words)


def _invent(rng: np.random.Generator, taken: set[str]) -> tuple[str, int]:
    from convrec.data.synth_text import ADJ, NOUN

    for _ in range(100):
        title = f"{ADJ[int(rng.integers(len(ADJ)))]} {NOUN[int(rng.integers(len(NOUN)))]} Rising"
        if normalize_title(title) not in taken:
            return title, int(rng.integers(1960, 2024))
    return "A Film Nobody Made", 2001


def _synthetic(convs: pl.DataFrame, *, data: Path, catalog: Catalog, n: int, seed: int) -> TeacherOutput:
    from convrec.baselines import resolve_rows
    from convrec.data.synth import answer_logits, world_from_catalog

    latent_path = Path(data) / "latent.parquet"
    if not latent_path.exists():
        raise ConvrecError(
            f"--teacher synthetic needs {latent_path}: it imitates an LLM on a world made by 'convrec data synth'"
        )
    if "genres" not in catalog.df.columns or "popularity" not in catalog.df.columns:
        raise ConvrecError("--teacher synthetic needs a synthetic catalog (genres and popularity columns)")
    world = world_from_catalog(catalog.df)
    latent = pl.read_parquet(latent_path).with_columns(
        pl.col("sample_id").str.replace(r"-\d+$", "").alias("conversation_id")
    )
    taste_of = dict(zip(latent["conversation_id"].to_list(), latent["taste"].to_list(), strict=False))
    missing = [c for c in convs["conversation_id"].to_list() if c not in taste_of]
    if missing:
        raise ConvrecError(f"--teacher synthetic: conversation '{missing[0]}' has no latent taste in {latent_path}")
    taken = set(catalog.norm)
    seen_rows = resolve_rows(catalog, convs["seen"])
    ids = catalog.item_ids
    texts, meant = [], []
    for conv_id, seen in zip(convs["conversation_id"].to_list(), seen_rows, strict=True):
        rng = np.random.default_rng([seed, zlib.crc32(conv_id.encode())])
        if rng.random() < P_REFUSAL:
            texts.append(REFUSALS[int(rng.integers(len(REFUSALS)))])
            meant.append([])
            continue
        taste = np.asarray(taste_of[conv_id])
        belief = (1 - TASTE_NOISE) * taste + TASTE_NOISE * rng.dirichlet(np.full(len(taste), 0.5))
        logits = answer_logits(world, belief) + POP_BIAS * world.log_pop + GUMBEL * rng.gumbel(size=len(ids))
        logits[seen] = -np.inf
        k = n - (int(rng.integers(1, 4)) if rng.random() < 0.1 else 0)  # sometimes a short list
        rows = np.argsort(-logits)[:k]
        lines, line_meant = [], []
        for r in rows:
            if rng.random() < P_INVENTED:
                lines.append(format_item(*_invent(rng, taken)))
                line_meant.append(None)
                continue
            title, year = catalog.titles[r], catalog.years[r]
            if rng.random() < P_MISSPELL:
                title = _misspell(rng, title)
            if title.startswith("The ") and rng.random() < P_ARTICLE:
                title = f"{title[4:]}, The"
            u = rng.random()
            if u < P_NO_YEAR:
                year = None
            elif u < P_NO_YEAR + P_YEAR_OFF:
                year = year + int(rng.choice([-1, 1])) * int(
                    rng.integers(1, 3) if rng.random() < 0.5 else rng.integers(3, 7)
                )
            lines.append(format_item(title, year))
            line_meant.append(ids[r])
        style = rng.random()
        if style < 0.4:
            lines = [f"{i}. {ln}" for i, ln in enumerate(lines, 1)]
        elif style < 0.55:
            lines = [f"- **{ln}**" for ln in lines]
        preamble = PREAMBLES[int(rng.integers(len(PREAMBLES)))]
        texts.append("\n".join([preamble, *lines] if preamble else lines))
        meant.append(line_meant)
    return TeacherOutput(texts, meant=meant)


def describe_items(keys: list[tuple[str, int | None]], llm: LLMConfig) -> dict[tuple[str, int | None], str]:
    """One-sentence descriptions (genres, keywords, plot) of teacher items the catalog lacks, for
    their remap embedding; cached like every other call."""
    if not keys:
        return {}
    client = LLMClient(llm)
    requests = [
        [
            {
                "role": "user",
                "content": f"In one sentence, describe the movie {format_item(t, y)}: its genres, "
                "a few keywords and the plot. Answer with the sentence only.",
            }
        ]
        for t, y in keys
    ]
    answers = client.complete_many(requests, desc="describing out-of-catalog items")
    require_all(answers, client.usage, "--describe")
    return {k: (a.text or "").strip().split("\n")[0][:400] for k, a in zip(keys, answers, strict=True)}
