"""Log-probabilities of chosen tokens without the full (B, T, V) logits.

With a real vocabulary (Gemma: V = 262,144) the logits, not the transformer, dominate memory:
8 × 430 positions in fp32 are 3.6 GB, and autograd keeps them for the backward pass. Here the
decoder body runs once for the hidden states h (B, T, H); only the positions whose next token is
scored are gathered, and the output head runs over them in chunks of ``chunk_rows``:

    log π(x_t | x_<t) = z[x_t] − logsumexp(z),  z = softcap(W h_{t−1}) / τ,

with each chunk under activation checkpointing, so forward and backward hold one chunk's
(rows × V) fp32 logits at a time, whatever the batch. With ``allowed`` (the token ids a
constrained sampler allowed at each scored position) the head runs over those ids only
(`convrec.decoding.head.RestrictedHead`: a chunk's union of ids, never the vocabulary), and the
logsumexp over each position's own: the log-probability under the masked policy the token was
drawn from. ``softcap(z) = c·tanh(z / c)`` is Gemma's ``final_logit_softcapping`` (identity when
the config has none), exactly what the model's own forward applies after its ``lm_head``.
`prefix_logps` scores completions that continue shared prompts (a GRPO group's G samples of one
conversation) with one decoder pass per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from convrec.decoding.cache import cache_kwarg
from convrec.decoding.head import RestrictedHead, unwrap

__all__ = ["unwrap", "selected_logps", "prefix_logps", "completion_loss"]

CHUNK_BYTES = 128 * 2**20  # fp32 logits per chunk


def chunk_rows(vocab: int, budget: int = CHUNK_BYTES) -> int:
    return max(1, budget // (4 * vocab))


def _chunk(h: torch.Tensor, tgt: torch.Tensor, head: RestrictedHead, temperature: float, entropy: bool, allowed=None):
    if allowed is None:
        z, col = head.logits(h, None, temperature), tgt
    else:  # the head over the chunk's allowed ids only, each row masked to its own
        scored = head.restricted(h, allowed, temperature)
        z, col = scored.z, scored.column(tgt)
    lse = torch.logsumexp(z, dim=-1)
    logp = z.gather(-1, col.unsqueeze(-1)).squeeze(-1) - lse
    if not entropy:
        return logp, None
    with torch.no_grad():  # H = logsumexp(z) − Σ softmax(z)·z, over the allowed tokens (0·−inf counts 0)
        pz = torch.softmax(z, dim=-1) * z
        ent = lse - torch.where(torch.isfinite(z), pz, 0.0).sum(-1)
    return logp, ent


def _spans(n: int, vocab: int, rows: int | None, allowed) -> list[tuple[int, int]]:
    """Chunks of scored rows whose (rows × head columns) fp32 logits fit `CHUNK_BYTES`; with ``allowed``
    a chunk's columns are at most the sum of its rows' set sizes."""
    if rows or allowed is None:
        step = rows or chunk_rows(vocab)
        return [(s, min(n, s + step)) for s in range(0, n, step)]
    spans, start, width = [], 0, 0
    for i, ids in enumerate(allowed):
        width += len(ids)
        if i > start and 4 * (i + 1 - start) * min(width, vocab) > CHUNK_BYTES:
            spans.append((start, i))
            start, width = i, len(ids)
    return [*spans, (start, n)] if n else spans


def _score(h, tgt, head: RestrictedHead, temperature: float, entropy: bool, rows: int | None, allowed):
    """log π(tgt | h) (and the entropy) for gathered hidden states (N, H), a chunk of rows at a time."""
    if allowed is not None and len(allowed) != h.shape[0]:
        raise ValueError(f"allowed has {len(allowed)} entries for {h.shape[0]} scored tokens")
    grad = torch.is_grad_enabled() and h.requires_grad
    parts, ents = [], []
    for s, e in _spans(h.shape[0], head.vocab_size, rows, allowed):
        args = (h[s:e], tgt[s:e], head, temperature, entropy, None if allowed is None else allowed[s:e])
        lp, ent = checkpoint(_chunk, *args, use_reentrant=False) if grad else _chunk(*args)
        parts.append(lp)
        ents.append(ent)
    flat = torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)
    return flat, (torch.cat(ents) if entropy and ents else None)


def _scatter(flat, ents, shape, where, entropy: bool):
    """The flat scores back at their (b, t) positions, 0 elsewhere."""
    logp = torch.zeros(shape, dtype=flat.dtype, device=flat.device).index_put(where, flat)
    ent_full = None
    if entropy:
        ent_full = torch.zeros(shape, dtype=torch.float32, device=flat.device)
        if ents is not None:
            ent_full[where] = ents
    return logp, ent_full


def selected_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    score: torch.Tensor,
    *,
    position_ids: torch.Tensor | None = None,
    temperature: float = 1.0,
    entropy: bool = False,
    rows: int | None = None,
    allowed: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(input_ids[b, t] | input_ids[b, <t]) where ``score[b, t]`` (bool, B × T), else 0; and the
    per-position entropy of that next-token distribution (no grad) when ``entropy``.

    ``score[:, 0]`` must be False (the first token has no prefix). ``allowed``: one id tensor per
    scored token, row by row (`CatalogConstraints.replay`), to normalise over those ids only."""
    head = RestrictedHead(model)
    hidden = head.body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
    where = score[:, 1:].nonzero(as_tuple=True)  # (b, t-1): the positions that predict a scored token
    h, tgt = hidden[:, :-1][where], input_ids[:, 1:][where]
    flat, ents = _score(h, tgt, head, temperature, entropy, rows, allowed)
    return _scatter(flat, ents, score.shape, (where[0], where[1] + 1), entropy)


def prefix_logps(
    model,
    prompt: torch.Tensor,
    prompt_mask: torch.Tensor,
    index: torch.Tensor,
    completion: torch.Tensor,
    score: torch.Tensor,
    *,
    temperature: float = 1.0,
    entropy: bool = False,
    rows: int | None = None,
    allowed: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`selected_logps` of completions that continue shared prompts: log π(completion[b, t] |
    prompt[index[b]], completion[b, <t]) where ``score[b, t]`` (B × T), else 0.

    ``prompt`` (U × L, left-padded) holds each distinct prompt once; ``index`` (B) names the prompt
    of every completion; ``score`` marks each completion's tokens, a prefix of its row (right padding
    after it is neither attended nor scored). The decoder runs over each prompt once and the
    completions attend to its cached keys and values, gathered per row (`batch_select_indices`);
    the gradient flows back through that cache into the one prompt pass, so the result and its
    gradient are those of B full sequences, at U prompt passes instead of B (G× fewer for GRPO's
    groups). Position ids count real tokens only, as `generate` assigns them."""
    head = RestrictedHead(model)
    body = head.body
    pos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    key = cache_kwarg(body)  # the output field has the argument's name in both transformers lines
    pre = body(input_ids=prompt, attention_mask=prompt_mask, position_ids=pos, use_cache=True)
    cache = getattr(pre, key)
    cache.batch_select_indices(index)
    attn = torch.cat([prompt_mask[index], score.long()], dim=1)
    cpos = (attn.cumsum(-1) - 1).clamp(min=0)[:, prompt.shape[1] :]
    hidden = body(
        input_ids=completion, attention_mask=attn, position_ids=cpos, use_cache=True, **{key: cache}
    ).last_hidden_state
    # position t is predicted by the state before it: the prompt's last for t = 0, else completion t − 1
    before = torch.cat([pre.last_hidden_state[:, -1:][index], hidden[:, :-1]], dim=1)
    where = score.nonzero(as_tuple=True)
    flat, ents = _score(before[where], completion[where], head, temperature, entropy, rows, allowed)
    return _scatter(flat, ents, score.shape, where, entropy)


def completion_loss(
    model, batch: dict[str, torch.Tensor], ignore: int = -100, allowed: Sequence[torch.Tensor] | None = None
) -> tuple[torch.Tensor, int]:
    """Mean negative log-likelihood of the labelled tokens (what ``model(**batch).loss`` computes with
    labels: causal shift, ``ignore`` masked) and how many tokens it averaged over. ``allowed`` (one id
    tensor per labelled token, row by row): each normalised over those ids only (sft ``--catalog-loss``)."""
    labels = batch["labels"]
    score = labels != ignore
    score[:, 0] = False
    logp, _ = selected_logps(model, batch["input_ids"], batch["attention_mask"], score, allowed=allowed)
    n = int(score.sum())
    return -(logp.sum() / max(1, n)), n
