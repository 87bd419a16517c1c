"""Batched list generation with a Hugging Face model: samples -> predictions frame.

Used by `convrec generate`, by sft's periodic validation and (later) by eval and serve, so every
place that asks a model for a list asks it the same way (`prompts.build_messages` + chat template).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import torch

from convrec.errors import ConvrecError
from convrec.prompts import build_messages


@dataclass(frozen=True)
class GenerationConfig:
    n_items: int = 20
    max_new_tokens: int = 256
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    max_prompt_tokens: int = 768


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


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: list[list[int]], cfg: GenerationConfig, progress=None) -> list[str]:
    model.eval()
    texts: list[str] = []
    pad = tokenizer.pad_token_id
    for start in range(0, len(prompts), cfg.batch_size):
        batch = prompts[start : start + cfg.batch_size]
        width = max(len(p) for p in batch)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=cfg.do_sample,
            temperature=cfg.temperature if cfg.do_sample else None,
            top_p=cfg.top_p if cfg.do_sample else None,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts.extend(tokenizer.batch_decode(out[:, width:], skip_special_tokens=True))
        if progress is not None:
            progress(len(batch))
    return texts


def generate_predictions(model, tokenizer, samples: pl.DataFrame, cfg: GenerationConfig, progress=None) -> pl.DataFrame:
    """The predictions artifact (sample_id, text) for every sample; shared conversations run once."""
    convs = samples.unique("conversation_id", keep="first", maintain_order=True)
    prompts = encode_prompts(tokenizer, convs["messages"].to_list(), cfg.n_items, cfg.max_prompt_tokens)
    texts = dict(zip(convs["conversation_id"], generate_texts(model, tokenizer, prompts, cfg, progress), strict=True))
    return pl.DataFrame(
        {"sample_id": samples["sample_id"], "text": [texts[c] for c in samples["conversation_id"]]},
        schema={"sample_id": pl.String, "text": pl.String},
    )
