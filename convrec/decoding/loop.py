"""Catalog-constrained decoding in one plain loop: the hot path of constrained rollouts and lists.

`model.generate` with `CatalogLogitsProcessor` draws the same lists, but pays transformers'
per-token machinery (processor lists, stopping criteria, cache bookkeeping), which for a small
student on a CPU costs more than its forward pass. Each step here is: score the last hidden state
over every row's allowed ids only (its trie walk, `RowState.next_ids`, the one rule of what a row may
write; `convrec.decoding.head.RestrictedHead`: never the whole vocabulary), sample or take the argmax,
advance the walks, run the decoder on the new tokens with the KV cache.

Jump-forward: when the mask leaves every unfinished row exactly one token (with one token per
catalog line, the newline after each item and the stop token after the k-th), that token is
appended without sampling and goes into the same forward as the sampled one. Under the masked
policy it has probability 1, so the lists are drawn from the same distribution (and greedy lists
are the same lists) with up to half the forward passes.

An `Observer` (the server's) watches every token as it is taken and may end a row (stop sequences,
budgets, deadlines, cancellation, streaming) and adjust the logits over the allowed ids first
(OpenAI's penalties and ``logit_bias``); generation and rollouts pass none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from convrec.decoding.constrained import RowState
from convrec.decoding.head import RestrictedHead, RestrictedLogits


@dataclass(frozen=True)
class Decoded:
    tokens: list[list[int]]  # per row: the generated ids, up to and including the stop token sampled
    complete: list[bool]  # per row: stopped between lines (not cut mid-line by the token budget)


class Observer(Protocol):
    def adjust(self, z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The logits to sample from: ``z`` (rows × ids, at temperature 1, −inf outside each row's set)
        adjusted; the masked entries must stay −inf."""

    def take(self, tokens: list[int | None], scored: RestrictedLogits | None) -> list[bool]:
        """Each live row's new token (None: the row had ended) and the adjusted logits it was drawn
        from (None: every token was forced, probability 1); True where the row must end now."""


def _top_p(z: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (at least one), as
    transformers' TopPLogitsWarper does after the temperature."""
    sorted_z, order = torch.sort(z, descending=True, dim=-1)
    probs = torch.softmax(sorted_z, dim=-1)
    drop = probs.cumsum(-1) - probs > top_p  # mass before this token already reaches top_p
    drop[:, 0] = False
    return z.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def _next_tokens(
    head: RestrictedHead,
    h: torch.Tensor,
    allowed: list[torch.Tensor],
    greedy: bool,
    temperature: float,
    top_p: float,
    observer: Observer | None,
) -> tuple[torch.Tensor, RestrictedLogits]:
    """Each row's next token from its last hidden state ``h`` (B × H), under its ``allowed`` ids: the head
    runs over the union of the rows' ids only (exact under the masked policy). Also returns the logits at
    temperature 1 (after the observer's adjustment) the tokens were drawn from."""
    scored = head.restricted(h, allowed)
    if observer is not None:
        scored = RestrictedLogits(observer.adjust(scored.z, scored.ids), scored.ids)
    if greedy:
        return scored.to_vocab(scored.z.argmax(-1)), scored
    z = scored.z / temperature if temperature != 1.0 else scored.z
    z = _top_p(z, top_p) if top_p < 1.0 else z
    return scored.to_vocab(sample(z)), scored


def sample(z: torch.Tensor) -> torch.Tensor:
    """One draw per row from softmax(z) (B × V, −inf where masked) that can never pick a masked entry:
    `torch.multinomial` draws from the probabilities themselves, and a masked entry's is exactly 0.
    (An inverse-CDF draw over ``softmax(z).cumsum()`` can: CUDA's parallel scan may step the sum up across
    a zero-probability entry, and u · total can land on that step.)"""
    return torch.multinomial(torch.softmax(z, dim=-1), 1).squeeze(-1)


@torch.no_grad()
def decode_constrained(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    states: Sequence[RowState],
    *,
    max_new_tokens: int,
    pad_id: int,
    stop_ids: Sequence[int],
    greedy: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    cache=None,
    observer: Observer | None = None,
) -> Decoded:
    """Constrained lists for a left-padded batch, one `RowState` (its trie walk) per row.

    ``cache``: a KV cache already holding all but the last column of ``input_ids`` (a GRPO group's
    shared prompt prefill, repeated per row); without it the whole prompt is run here.
    ``observer``: sees each token as it is taken and may end rows early (see `Observer`)."""
    from convrec.decoding.cache import cache_kwarg, new_cache

    head = RestrictedHead(model)
    body = head.body  # hidden states only: the head runs over the allowed ids, never the vocabulary
    key = cache_kwarg(body)
    if cache is None:
        cache, feed = new_cache(model), input_ids
    else:
        feed = input_ids[:, -1:]
    device, b = input_ids.device, input_ids.shape[0]
    attn = attention_mask
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    next_pos = pos[:, -1] + 1
    pos = pos[:, -feed.shape[1] :]
    stops = set(stop_ids)
    out: list[list[int]] = [[] for _ in range(b)]
    live = [True] * b
    n = 0
    allowed = [s.next_ids(device) for s in states]
    while n < max_new_tokens:
        hidden = body(input_ids=feed, attention_mask=attn, position_ids=pos, use_cache=True, **{key: cache})
        drawn, scored = _next_tokens(
            head, hidden.last_hidden_state[:, -1], allowed, greedy, temperature, top_p, observer
        )
        cols = [drawn.tolist()]
        while True:  # take the column, then every following one the masks force on all live rows
            taken: list[int | None] = [None] * b
            for r, tok in enumerate(cols[-1]):
                if live[r]:
                    out[r].append(tok)
                    states[r].advance(tok)
                    live[r] = tok not in stops
                    taken[r] = tok
                else:
                    cols[-1][r] = pad_id
            if observer is not None:
                ended = observer.take(taken, scored if len(cols) == 1 else None)
                live = [lv and not e for lv, e in zip(live, ended, strict=True)]
            n += 1
            if not any(live) or n >= max_new_tokens:
                break
            allowed = [s.next_ids(device) for s in states]  # also the next sampling step's masks
            if any(lv and len(a) != 1 for a, lv in zip(allowed, live, strict=True)):
                break
            cols.append([int(a[0]) if lv else pad_id for a, lv in zip(allowed, live, strict=True)])
        if not any(live):
            break
        feed = torch.tensor(cols, device=device).T
        m = feed.shape[1]
        attn = torch.cat([attn, attn.new_ones(b, m)], dim=1)
        pos = next_pos[:, None] + torch.arange(m, device=device)
        next_pos = next_pos + m
    return Decoded(out, [s.at_line_start for s in states])
