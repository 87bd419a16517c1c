"""Rollout engines: G sampled completions per prompt, behind one interface.

`hf` runs transformers' generate on the policy itself (the CPU path and the default): the prompts
of a batch are prefilled once, their KV cache repeated G times, and generation continues from it,
so a prompt is encoded once, not G times; constrained rollouts then run the plain decoding loop
`convrec.decoding.loop.decode_constrained` (the same masked distribution, fewer passes). `vllm` runs a
colocated vLLM engine (`convrec.train.vllm_engine`: optional GPU dependency, one per process, prefix
caching on, ``n = G`` per prompt, constrained through a logits processor over the same trie walk)
whose weights are refreshed from the policy after every update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from convrec.decoding.cache import cache_kwarg, new_cache
from convrec.decoding.constrained import CatalogConstraints, RowConstraint
from convrec.decoding.generate import left_pad
from convrec.decoding.loop import decode_constrained
from convrec.errors import ConvrecError
from convrec.train.config import ENGINES
from convrec.train.logits import unwrap


@dataclass(frozen=True)
class SamplingConfig:
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 280
    prompts_per_batch: int = 4  # prompts whose G samples are generated together
    stop_ids: tuple[int, ...] = ()  # every token that ends a turn (`models.load.stop_token_ids`); () = EOS


class RolloutEngine(Protocol):
    def generate(
        self, prompts: list[list[int]], cfg: SamplingConfig, rows: Sequence[RowConstraint] | None = None
    ) -> list[list[int]]:
        """len(prompts) × G completions, the G of a prompt consecutive; each holds the sampled ids,
        ending with the stop token the model sampled (any of ``cfg.stop_ids``) when it stopped, never
        one it did not sample, without padding. ``rows`` (one per prompt) asks for
        catalog-constrained sampling: every line a catalog item, none repeated or excluded."""
        ...

    def sync_weights(self, model) -> None:
        """Make the engine sample from the policy's current weights."""
        ...


def _trim(row: list[int], stops: Sequence[int], pad: int) -> list[int]:
    """Up to and including the first stop token; a row cut by the budget loses trailing padding only."""
    first = next((i for i, t in enumerate(row) if t in stops), None)
    if first is not None:
        return row[: first + 1]
    while row and row[-1] == pad and pad not in stops:
        row = row[:-1]
    return row


def stops_of(cfg: SamplingConfig, tokenizer) -> list[int]:
    return list(cfg.stop_ids) or [tokenizer.eos_token_id]


class HFEngine:
    """Sampling with the policy module itself; nothing to sync. With ``constraints`` (the catalog
    trie) it can sample catalog-constrained lists (`convrec.decoding.constrained`)."""

    def __init__(self, model, tokenizer, *, share_prompt: bool = True, constraints: CatalogConstraints | None = None):
        self.model, self.tokenizer, self.share_prompt = model, tokenizer, share_prompt
        self.constraints = constraints

    def sync_weights(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]], cfg: SamplingConfig, rows: Sequence[RowConstraint] | None = None
    ) -> list[list[int]]:
        if rows is not None and self.constraints is None:
            raise ConvrecError("constrained rollouts need the engine built with the catalog's constraints")

        model, tok = self.model, self.tokenizer
        was_training = model.training
        model.eval()
        pad, stops, g = tok.pad_token_id, stops_of(cfg, tok), cfg.group_size
        out: list[list[int]] = []
        for start in range(0, len(prompts), cfg.prompts_per_batch):
            batch = prompts[start : start + cfg.prompts_per_batch]
            ids, attn = left_pad(batch, pad, model.device)
            width = ids.shape[1]
            kwargs, cache = {}, None
            if self.share_prompt and width > 1:
                # prefill all but the last prompt token once, then give each of the G samples a copy; the
                # decoder alone: the cache is what is wanted, not the prompt's (positions × vocabulary) logits
                body = unwrap(model).get_decoder()
                cache, key = new_cache(model), cache_kwarg(body)
                pos = (attn.cumsum(-1) - 1).clamp(min=0)
                body(
                    input_ids=ids[:, :-1],
                    attention_mask=attn[:, :-1],
                    position_ids=pos[:, :-1],
                    use_cache=True,
                    **{key: cache},
                )
                cache.batch_repeat_interleave(g)
                kwargs[key] = cache
            if rows is not None:  # the plain constrained loop: same distribution, no generate overhead
                batch_rows = [r for r in rows[start : start + cfg.prompts_per_batch] for _ in range(g)]
                decoded = decode_constrained(
                    model,
                    ids.repeat_interleave(g, 0),
                    attn.repeat_interleave(g, 0),
                    self.constraints.states(batch_rows),
                    max_new_tokens=cfg.max_new_tokens,
                    pad_id=pad,
                    stop_ids=stops,
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    cache=cache,
                )
                out.extend(decoded.tokens)
                continue
            seqs = model.generate(
                input_ids=ids.repeat_interleave(g, 0),
                attention_mask=attn.repeat_interleave(g, 0),
                do_sample=True,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                top_k=0,
                max_new_tokens=cfg.max_new_tokens,
                pad_token_id=pad,
                eos_token_id=stops,
                **kwargs,
            )
            out.extend(_trim(row, stops, pad) for row in seqs[:, width:].tolist())
        if was_training:
            model.train()
        return out


def make_engine(
    name: str, model, tokenizer, model_path: str, constraints: CatalogConstraints | None = None, **kwargs
) -> RolloutEngine:
    """``kwargs``: the vllm engine's settings (`vllm_engine.VLLMEngine`)."""
    if name == "hf":
        return HFEngine(model, tokenizer, constraints=constraints)
    if name == "vllm":
        from convrec.train.vllm_engine import VLLMEngine  # imports vLLM only when it is asked for

        return VLLMEngine(model_path, constraints=constraints, **kwargs)
    raise ConvrecError(f"unknown engine '{name}': choose one of {', '.join(ENGINES)}")
