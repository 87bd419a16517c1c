"""Scoring rollouts: completion ids -> segment ids, per-rank relevance and list statistics.

Items are judged by `metrics.judge_lists` (one batched call per batch), the same catalog matcher
and rules eval uses (seen, duplicate and out-of-catalog items get relevance 0), so RL optimises
exactly what eval measures.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from convrec.catalog import Catalog
from convrec.evaluation.metrics import DUP, OUT, judge_lists
from convrec.listfmt import parse_line
from convrec.train import rank_grpo


@lru_cache(maxsize=4)
def _newline_ids(tokenizer) -> torch.Tensor:
    vocab = len(tokenizer)
    return torch.tensor(["\n" in tokenizer.decode([i]) for i in range(vocab)], dtype=torch.bool)


def newline_lookup(tokenizer) -> torch.Tensor:
    """Bool per vocabulary id: the token's text holds a newline (it ends an item)."""
    return _newline_ids(tokenizer)


def pad_completions(completions: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and their mask."""
    width = max(1, max(len(c) for c in completions))
    ids = torch.full((len(completions), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(completions), width), dtype=torch.bool)
    for i, c in enumerate(completions):
        ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        mask[i, : len(c)] = True
    return ids, mask


@dataclass
class Scored:
    ids: torch.Tensor  # (B, T) completion ids, right-padded
    seg: torch.Tensor  # (B, T) segment ids (rank_grpo.segment_ranks)
    rel: torch.Tensor  # (B, N) 1 where the item at that rank is a hit
    dup: torch.Tensor  # (B, N) 1 where the item at that rank repeats an earlier one of its list
    overflow_lines: torch.Tensor  # (B,) lines written past the N-th (rank_grpo.overflow_lines)
    in_catalog: float  # share of emitted items that resolve to the catalog
    items_per_list: float
    format_valid: float  # share of lists with exactly N parseable items and a stop token
    duplicate_lines: float  # share of emitted items that repeat an earlier one
    clipped: float  # share of completions cut by the token budget (no stop token)


def score(
    tokenizer,
    completions: list[list[int]],
    ground_truth: list[list[tuple[str, int | None]]],
    seen: list[list[tuple[str, int | None]]],
    catalog: Catalog,
    n_items: int,
    stop_ids: list[int] | None = None,
) -> Scored:
    """Cut each completion into items, parse each item with `listfmt.parse_line` and judge the list.

    ``stop_ids`` (`models.load.stop_token_ids`) are the tokens that end a turn; any of them is the EOS
    segment. Without them, the tokenizer's EOS."""
    ids, mask = pad_completions(completions, tokenizer.pad_token_id)
    breaks = newline_lookup(tokenizer)[ids.clamp(max=len(tokenizer) - 1)]
    stops = torch.tensor(stop_ids if stop_ids else [tokenizer.eos_token_id], dtype=torch.long)
    seg = rank_grpo.segment_ranks(breaks, torch.isin(ids, stops), mask, n_items)
    rel = torch.zeros(len(completions), n_items)
    dup = torch.zeros(len(completions), n_items)
    emitted = in_cat = valid = dups = clipped = 0
    lists: list[tuple[list[int], list]] = []
    for b in range(len(completions)):
        row, segs = ids[b].tolist(), seg[b].tolist()
        pieces: dict[int, list[int]] = {}
        for t, k in zip(row, segs, strict=True):
            if 1 <= k <= n_items:
                pieces.setdefault(k, []).append(t)
        items = []
        for k in sorted(pieces):
            line = parse_line(tokenizer.decode(pieces[k], skip_special_tokens=True))
            items.append(line.item or ("", None))  # unparseable: judged out of catalog
        lists.append((sorted(pieces), items))
    judged_all = judge_lists([items for _, items in lists], ground_truth, seen, catalog)
    for b, ((keys, items), judged) in enumerate(zip(lists, judged_all, strict=True)):
        for pos, k in enumerate(keys):
            rel[b, k - 1] = judged.rel[pos]
            dup[b, k - 1] = float(judged.status[pos] == DUP)
        emitted += len(items)
        in_cat += sum(s != OUT for s in judged.status)
        dups += sum(s == DUP for s in judged.status)
        ended = bool((seg[b] == n_items + 2).any())
        clipped += int(not ended)
        valid += int(ended and len(items) == n_items and all(it[0] for it in items))
    n = max(1, len(completions))
    lines = rank_grpo.overflow_lines(breaks & mask, seg, n_items)
    return Scored(
        ids, seg, rel, dup, lines, in_cat / max(1, emitted), emitted / n, valid / n, dups / max(1, emitted), clipped / n
    )
