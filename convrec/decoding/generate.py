"""Batched list generation with a Hugging Face model: samples -> predictions frame.

Used by `convrec generate`, by sft's periodic validation and (later) by eval and serve, so every
place that asks a model for a list asks it the same way (`prompts.build_messages` + chat template).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import polars as pl
import torch

from convrec.errors import ConvrecError
from convrec.models.load import stop_token_ids
from convrec.prompts import build_messages

if TYPE_CHECKING:
    from convrec.catalog import Catalog
    from convrec.decoding.constrained import CatalogConstraints, RowConstraint


@dataclass(frozen=True)
class GenerationConfig:
    n_items: int = 20
    max_new_tokens: int = 256
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    max_prompt_tokens: int = 768
    constrained: bool = False  # catalog-constrained decoding (`convrec.decoding.constrained`)
    exclude_seen: bool = True  # with constrained: never list a title the conversation names


BUDGET_QUANTILE, BUDGET_MARGIN = 0.99, 8


def list_token_budget(tokenizer, catalog: Catalog, n_items: int) -> int:
    """Tokens an N-line list needs under this tokenizer: N × the 99th percentile of the catalog's
    lines (``Title (Year)`` and its newline), plus a margin for the stop token. The one derivation of a
    list's budget (generate, sft validation, rl rollouts), so no tokenizer's guess is hard-coded."""
    import numpy as np

    return int(np.ceil(_line_tokens(tokenizer, catalog) * n_items)) + BUDGET_MARGIN


@lru_cache(maxsize=8)  # validation asks again every few hundred steps: tokenise the catalog once
def _line_tokens(tokenizer, catalog: Catalog) -> float:
    import numpy as np

    labels = [catalog.label(r) for r in range(len(catalog))]
    if len(labels) > 20_000:  # a quantile does not need every line of a huge catalog
        labels = [labels[i] for i in np.linspace(0, len(labels) - 1, 20_000).astype(int)]
    lengths = [len(x) for x in tokenizer([f"{lb}\n" for lb in labels], add_special_tokens=False)["input_ids"]]
    return float(np.quantile(lengths, BUDGET_QUANTILE)) if lengths else 16.0


def _encode(tokenizer, msgs: list[dict], n_items: int) -> list[int]:
    ids = tokenizer.apply_chat_template(build_messages(msgs, n_items), add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def encode_prompt(tokenizer, msgs: list[dict], n_items: int, max_tokens: int) -> tuple[list[int], bool]:
    """Chat-template ids for one conversation, and whether it had to be shortened to ``max_tokens``.

    The conversation loses its oldest turns first, then the start of its oldest remaining turn; the
    chat template and the instruction always stay whole.
    """
    ids = _encode(tokenizer, msgs, n_items)
    if len(ids) <= max_tokens:
        return ids, False
    msgs = list(msgs)
    while len(msgs) > 1 and len(ids) > max_tokens:
        msgs = msgs[1:]
        ids = _encode(tokenizer, msgs, n_items)
    while len(ids) > max_tokens and msgs[0]["content"]:
        content = msgs[0]["content"]
        cut = max(1, len(content) * (len(ids) - max_tokens) // max(1, len(ids)) + 1)
        msgs[0] = {**msgs[0], "content": content[cut:]}
        ids = _encode(tokenizer, msgs, n_items)
    if len(ids) > max_tokens:
        raise ConvrecError(f"the prompt template alone needs {len(ids)} tokens, over the {max_tokens} allowed")
    return ids, True


def encode_prompts(tokenizer, conversations: list[list[dict]], n_items: int, max_prompt_tokens: int) -> list[list[int]]:
    """`encode_prompt` over a batch (ids only)."""
    return [encode_prompt(tokenizer, msgs, n_items, max_prompt_tokens)[0] for msgs in conversations]


def left_pad(prompts: Sequence[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and their attention mask, so every continuation starts at the same column."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    prompts: list[list[int]],
    cfg: GenerationConfig,
    progress=None,
    constraints: CatalogConstraints | None = None,
    row_constraints: Sequence[RowConstraint] | None = None,
) -> list[str]:
    """Decoded completions; with ``constraints``, each prompt's `RowConstraint` shapes its list."""
    model.eval()
    texts: list[str] = []
    pad, stops = tokenizer.pad_token_id, stop_token_ids(tokenizer, model)
    for start in range(0, len(prompts), cfg.batch_size):
        batch = prompts[start : start + cfg.batch_size]
        input_ids, attention = left_pad(batch, pad, model.device)
        if constraints is not None:
            from convrec.decoding.loop import decode_constrained

            decoded = decode_constrained(
                model,
                input_ids,
                attention,
                constraints.states(row_constraints[start : start + cfg.batch_size]),
                max_new_tokens=cfg.max_new_tokens,
                pad_id=pad,
                stop_ids=stops,
                greedy=not cfg.do_sample,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
            )
            texts.extend(
                # a line cut by the token budget is not a catalog item yet: drop it
                t if done else t.rpartition("\n")[0]
                for t, done in zip(
                    tokenizer.batch_decode(decoded.tokens, skip_special_tokens=True), decoded.complete, strict=True
                )
            )
        else:
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=cfg.max_new_tokens,
                do_sample=cfg.do_sample,
                temperature=cfg.temperature if cfg.do_sample else None,
                top_p=cfg.top_p if cfg.do_sample else None,
                pad_token_id=pad,
                eos_token_id=stops,  # a chat model ends its turn with any of these
            )
            texts.extend(tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True))
        if progress is not None:
            progress(len(batch))
    return texts


def generate_predictions(
    model, tokenizer, samples: pl.DataFrame, cfg: GenerationConfig, progress=None, catalog: Catalog | None = None
) -> pl.DataFrame:
    """The predictions artifact (sample_id, text) for every sample; shared conversations run once.

    ``cfg.constrained`` needs the ``catalog``: every line is then one of its items.
    """
    convs = samples.unique("conversation_id", keep="first", maintain_order=True)
    conversations = convs["messages"].to_list()
    prompts = encode_prompts(tokenizer, conversations, cfg.n_items, cfg.max_prompt_tokens)
    constraints, rows = None, None
    if cfg.constrained:
        from convrec.decoding.constrained import CatalogConstraints
        from convrec.decoding.mentions import MentionFinder

        if catalog is None:
            raise ConvrecError("constrained generation needs the catalog")
        constraints = CatalogConstraints(tokenizer, catalog)
        finder = MentionFinder(catalog) if cfg.exclude_seen else None
        rows = [
            constraints.row_constraint(cfg.n_items, finder.rows_in_messages(msgs) if finder else ())
            for msgs in conversations
        ]
    generated = generate_texts(model, tokenizer, prompts, cfg, progress, constraints, rows)
    texts = dict(zip(convs["conversation_id"], generated, strict=True))
    return pl.DataFrame(
        {"sample_id": samples["sample_id"], "text": [texts[c] for c in samples["conversation_id"]]},
        schema={"sample_id": pl.String, "text": pl.String},
    )
