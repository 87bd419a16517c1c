"""Reflect: a judge rates the top N_r remap candidates of each conversation, s_reflect = s_remap + γ·r.

Judges:
- an LLM through the one client: the candidates are shuffled (seeded per conversation) and shown
  in chunks, which limits the position bias LLM judges are known for; the order shown is recorded.
  The answer must be JSON, ``{"ratings": {"1": 2, "2": -1, ...}}`` with an integer in −2..2 per
  candidate number. An answer that is not JSON, misses numbers or rates out of range is asked again
  (``judge_retries`` times, each a new cached call quoting the problem); ratings still missing after
  that count as 0 (no opinion) and every problem is counted.
- ``embed``: offline. Rates by similarity bands: the candidate's cosine to the user's own words plus
  its best cosine to the movies the user mentioned, z-scored over the candidates, cut at ±0.5 and
  ±1.5 standard deviations into −2..2.
"""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from convrec.catalog import Catalog
from convrec.llm.client import LLMClient, LLMConfig, Usage, require_all
from convrec.pipeline.common import item_texts, pack_candidates, unpack_candidates
from convrec.pipeline.embed import Embedder
from convrec.prompts import render_conversation

RATINGS = (-2, -1, 0, 1, 2)
JUDGE_PROMPT = (
    "{conversation}\n\n"
    "You are judging candidate movies for the user in the conversation above. Rate how well each "
    "candidate fits what this user wants right now: 2 = excellent fit, 1 = good fit, 0 = unsure, "
    "-1 = poor fit, -2 = clearly wrong for this user.\n\nCandidates:\n{candidates}\n\n"
    'Answer with JSON only, one integer rating per candidate number: {{"ratings": {{"1": 0, "2": 0, ...}}}}'
)
REASK = (
    "Your answer could not be used ({problem}). Answer again with JSON only: "
    '{{"ratings": {{"1": r, ..., "{n}": r}}}} with every number from 1 to {n} and each r an integer from -2 to 2.'
)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


@dataclass
class ReflectConfig:
    top_n: int = 100  # N_r
    gamma: float = 0.5
    chunk: int = 25  # candidates per judge prompt
    judge_retries: int = 2
    seed: int = 0
    n: int = 20


@dataclass
class JudgeStats:
    conversations: int = 0
    prompts: int = 0
    reasked: int = 0
    not_json: int = 0  # answers (first tries and re-asks) that were not JSON
    out_of_range: int = 0  # ratings outside -2..2 or not integers (dropped)
    unknown_ids: int = 0  # ratings for numbers that were not shown
    unrated: int = 0  # candidates with no valid rating after all re-asks (counted as 0)
    rated: int = 0
    histogram: dict = field(default_factory=dict)
    usage: dict = field(default_factory=dict)


def parse_ratings(text: str | None, n: int) -> tuple[dict[int, int], Counter]:
    """Valid ratings {candidate number: rating} from a judge answer, and a count of the problems.

    Accepts ``{"ratings": {"1": 2, ...}}``, a bare ``{"1": 2, ...}``, or ``{"ratings": [2, ...]}`` in
    candidate order, optionally inside a Markdown code fence or after some prose.
    """
    problems: Counter = Counter()
    text = text or ""
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start, end = body.find("{"), body.rfind("}")
    try:
        obj = json.loads(body[start : end + 1]) if start >= 0 and end > start else None
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        problems["not_json"] += 1
        return {}, problems
    raw = obj.get("ratings", obj)
    if isinstance(raw, list):
        raw = {str(i): v for i, v in enumerate(raw, 1)}
    if not isinstance(raw, dict):
        problems["not_json"] += 1
        return {}, problems
    out: dict[int, int] = {}
    for k, v in raw.items():
        try:
            idx = int(str(k).strip().strip("#."))
        except ValueError:
            problems["unknown_ids"] += 1
            continue
        if not 1 <= idx <= n:
            problems["unknown_ids"] += 1
            continue
        ok = isinstance(v, int | float) and not isinstance(v, bool) and float(v).is_integer() and -2 <= v <= 2
        if not ok:
            problems["out_of_range"] += 1
            continue
        out[idx] = int(v)
    problems["missing"] = n - len(out)
    return out, problems


def judge_messages(conversation: str, labels: list[str]) -> list[dict]:
    cands = "\n".join(f"{i}. {lab}" for i, lab in enumerate(labels, 1))
    return [{"role": "user", "content": JUDGE_PROMPT.format(conversation=conversation, candidates=cands)}]


def _problem_text(problems: Counter, n: int) -> str:
    if problems["not_json"]:
        return "not valid JSON"
    parts = []
    if problems["out_of_range"]:
        parts.append(f"{problems['out_of_range']} ratings were not integers from -2 to 2")
    if problems["missing"]:
        parts.append(f"{problems['missing']} of the {n} candidates had no rating")
    return "; ".join(parts) or "unknown problem"


def llm_ratings(
    messages: list[list[dict]],
    rows: np.ndarray,
    catalog: Catalog,
    conv_ids: list[str],
    llm: LLMConfig,
    cfg: ReflectConfig,
) -> tuple[np.ndarray, list[list[str]], JudgeStats]:
    """Ratings (conversations x N_r, NaN where no candidate) and the order each judge saw."""
    stats = JudgeStats(conversations=len(messages))
    ratings = np.full(rows.shape, np.nan)
    ratings[rows >= 0] = 0.0
    orders: list[list[str]] = []
    # (conversation, positions shown in this chunk, messages, answers so far)
    jobs: list[tuple[int, np.ndarray, list[dict]]] = []
    for i, (msgs, cid) in enumerate(zip(messages, conv_ids, strict=True)):
        valid = np.flatnonzero(rows[i] >= 0)
        rng = np.random.default_rng([cfg.seed, zlib.crc32(cid.encode())])
        shown = valid[rng.permutation(len(valid))]
        orders.append([catalog.item_ids[rows[i, j]] for j in shown])
        conv = render_conversation(msgs)
        for s in range(0, len(shown), cfg.chunk):
            pos = shown[s : s + cfg.chunk]
            jobs.append((i, pos, judge_messages(conv, [catalog.label(rows[i, j]) for j in pos])))
    client = LLMClient(llm)
    got: list[dict[int, int]] = [{} for _ in jobs]
    pending = list(range(len(jobs)))
    requests = {j: jobs[j][2] for j in pending}
    stats.prompts = len(jobs)
    problems_total: Counter = Counter()
    for attempt in range(cfg.judge_retries + 1):
        answers = client.complete_many([requests[j] for j in pending], desc=f"judge {llm.model} (try {attempt + 1})")
        require_all(answers, client.usage, f"judge {llm.model}")
        again = []
        for j, ans in zip(pending, answers, strict=True):
            n = len(jobs[j][1])
            parsed, problems = parse_ratings(ans.text, n)
            problems_total.update({k: v for k, v in problems.items() if k != "missing"})
            got[j].update(parsed)
            if len(got[j]) < n and attempt < cfg.judge_retries:
                again.append(j)
                requests[j] = [
                    *jobs[j][2],
                    {"role": "assistant", "content": ans.text or ""},
                    {"role": "user", "content": REASK.format(problem=_problem_text(problems, n), n=n)},
                ]
        stats.reasked += len(again)
        pending = again
        if not pending:
            break
    for j, (i, pos, _) in enumerate(jobs):
        for k, p in enumerate(pos, 1):
            if k in got[j]:
                ratings[i, p] = got[j][k]
                stats.rated += 1
            else:
                stats.unrated += 1
    stats.not_json = problems_total["not_json"]
    stats.out_of_range = problems_total["out_of_range"]
    stats.unknown_ids = problems_total["unknown_ids"]
    stats.usage = client.usage.as_dict()
    return ratings, orders, stats


def band(z: np.ndarray) -> np.ndarray:
    """z-scores -> ratings: <-1.5 -> -2, <-0.5 -> -1, <0.5 -> 0, <1.5 -> 1, else 2 (NaN stays NaN)."""
    r = np.digitize(np.nan_to_num(z, nan=0.0), [-1.5, -0.5, 0.5, 1.5]) - 2
    return np.where(np.isnan(z), np.nan, r.astype(np.float64))


def embed_ratings(
    messages: list[list[dict]], seen: list[np.ndarray], rows: np.ndarray, catalog: Catalog, embedder: Embedder
) -> tuple[np.ndarray, JudgeStats]:
    e_cat = embedder.catalog(item_texts(catalog))
    user = [" ".join(m["content"] for m in msgs if m["role"] == "user")[-1200:] for msgs in messages]
    e_user = embedder.texts(user, "embedding user turns")
    safe = np.where(rows >= 0, rows, 0)
    sim = np.einsum("bd,bmd->bm", e_user, e_cat[safe])
    for i, s in enumerate(seen):
        if len(s):
            sim[i] += (e_cat[safe[i]] @ e_cat[s].T).max(axis=1)
    sim[rows < 0] = np.nan
    mu = np.nanmean(sim, axis=1, keepdims=True)
    sd = np.nanstd(sim, axis=1, keepdims=True)
    z = (sim - mu) / np.where(sd > 1e-9, sd, 1.0)
    r = band(z)
    stats = JudgeStats(conversations=len(messages), rated=int(np.isfinite(r).sum()))
    return r, stats


def apply_ratings(scores: np.ndarray, ratings: np.ndarray, gamma: float) -> np.ndarray:
    """s_reflect = s_remap + γ·r (r = 0 where a candidate was not rated)."""
    return scores + gamma * np.nan_to_num(ratings, nan=0.0)


def run(
    remap: pl.DataFrame,
    catalog: Catalog,
    cfg: ReflectConfig,
    *,
    judge: str,
    llm: LLMConfig | None = None,
    embedder: Embedder | None = None,
) -> tuple[pl.DataFrame, JudgeStats]:
    from convrec.pipeline.common import seen_mask_rows, top_lists

    convs = remap.unique("conversation_id", keep="first", maintain_order=True)
    rows, fields = unpack_candidates(convs["candidates"], catalog)
    remap_score = fields["score"]
    top = np.where(np.arange(rows.shape[1])[None, :] < cfg.top_n, rows, -1)
    msgs = convs["messages"].to_list()
    orders = None
    if judge == "embed":
        assert embedder is not None
        r_top, stats = embed_ratings(msgs, seen_mask_rows(catalog, convs["seen"]), top, catalog, embedder)
    else:
        assert llm is not None
        r_top, orders, stats = llm_ratings(msgs, top, catalog, convs["conversation_id"].to_list(), llm, cfg)
    ratings = np.where(top >= 0, r_top, np.nan)
    new = apply_ratings(remap_score, ratings, cfg.gamma)
    new[rows < 0] = -np.inf
    order = np.argsort(-new, axis=1, kind="stable")
    rows = np.take_along_axis(rows, order, axis=1)
    out_fields = {"score": np.take_along_axis(np.where(np.isfinite(new), new, np.nan), order, axis=1)}
    out_fields["remap"] = np.take_along_axis(remap_score, order, axis=1)
    out_fields["rating"] = np.take_along_axis(ratings, order, axis=1)
    for k in ("exact", "semantic", "context"):
        if k in fields:
            out_fields[k] = np.take_along_axis(fields[k], order, axis=1)
    hist = Counter(int(x) for x in ratings[np.isfinite(ratings)].ravel())
    stats.histogram = {str(k): hist.get(k, 0) for k in RATINGS}
    items, texts = top_lists(rows, catalog, cfg.n)
    conv = convs.select("conversation_id").with_columns(
        pack_candidates(rows, out_fields, catalog),
        items,
        pl.Series("text", texts),
    )
    if orders is not None:
        conv = conv.with_columns(pl.Series("judge_order", orders, dtype=pl.List(pl.String)))
    keep = [c for c in remap.columns if c not in conv.columns or c == "conversation_id"]
    out = remap.select(keep).join(conv, on="conversation_id", how="left", maintain_order="left")
    return out, stats


__all__ = ["JudgeStats", "ReflectConfig", "Usage", "apply_ratings", "band", "parse_ratings", "run"]
