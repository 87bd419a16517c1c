"""Behaviour-cloning examples: (prompt ids, completion ids) with the loss on the completion only.

Targets are the Stage 1 SFT set's lists when given; otherwise each training sample's ground truth,
padded to N items with the co-occurrence baseline's ranking for that sample (never a seen or
ground-truth item), so the student always learns to write full N-line lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import torch

from convrec.baselines import cooc
from convrec.catalog import Catalog, normalize_title
from convrec.data import item_lists
from convrec.decoding.generate import encode_prompt
from convrec.errors import ConvrecError
from convrec.listfmt import format_list
from convrec.models.load import turn_end_id

IGNORE = -100


@dataclass
class Encoded:
    prompts: list[list[int]]
    completions: list[list[int]]
    truncated: int  # prompts cut from the left to fit the context


def ground_truth_targets(train: pl.DataFrame, catalog: Catalog, n: int) -> list[list[tuple[str, int | None]]]:
    """Each sample's ground truth, then the cooc ranking to fill N items."""
    fill = item_lists(cooc.recommend(train, train, catalog, n=n + 8)["items"])
    targets = []
    for gt, extra in zip(item_lists(train["ground_truth"]), fill, strict=True):
        keys = {(normalize_title(t), y) for t, y in gt}  # the matcher's key, not a second notion of equality
        targets.append((gt + [x for x in extra if (normalize_title(x[0]), x[1]) not in keys])[:n])
    return targets


def encode(
    tokenizer, samples: pl.DataFrame, targets: list[list[tuple[str, int | None]]], n: int, max_length: int
) -> Encoded:
    if samples.height == 0:
        raise ConvrecError("no training samples: the SFT set or train split is empty")
    stop = turn_end_id(tokenizer)  # the token the chat template ends a reply with: what the model must stop with
    completions = [tokenizer(format_list(t), add_special_tokens=False)["input_ids"] + [stop] for t in targets]
    longest = max(len(c) for c in completions)
    if longest >= max_length - 16:
        raise ConvrecError(f"target lists need {longest} tokens but the context is {max_length}: raise --max-length")
    encoded = [
        encode_prompt(tokenizer, msgs, n, max_length - len(c))
        for msgs, c in zip(samples["messages"].to_list(), completions, strict=True)
    ]
    return Encoded([ids for ids, _ in encoded], completions, sum(cut for _, cut in encoded))


def collate(enc: Encoded, index: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with labels masked on the prompt and the padding."""
    seqs = [enc.prompts[i] + enc.completions[i] for i in index]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, i in enumerate(index):
        p, c = enc.prompts[i], enc.completions[i]
        ids[row, : len(p) + len(c)] = torch.tensor(p + c)
        labels[row, len(p) : len(p) + len(c)] = torch.tensor(c)
        mask[row, : len(p) + len(c)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
