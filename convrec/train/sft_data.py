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
from convrec.decoding.constrained import CatalogConstraints, RowConstraint, RowState
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
    # per completion, per token: the ids constrained decoding allows there (`catalog_allowed`), or None
    allowed: list[list[torch.Tensor]] | None = None


def catalog_allowed(
    constraints: CatalogConstraints, completion: list[int], spec: RowConstraint, full: torch.Tensor
) -> tuple[list[torch.Tensor], int]:
    """The ids the catalog-constrained decoder allows before each completion token (its trie walk under
    ``spec``), so the loss there is normalised over what constrained decoding samples from; and how many
    tokens that covers. From the first token the walk cannot take (a title outside the catalog, a seen or
    repeated one) to the end, a position allows ``full`` (every id): the standard loss."""
    state, out = RowState(constraints.trie, spec), []
    cpu = torch.device("cpu")
    for tok in completion:
        ids = state.next_ids(cpu)
        if not bool((ids == tok).any()):
            break
        out.append(ids)
        state.advance(tok)
    restricted = len(out)
    return out + [full] * (len(completion) - restricted), restricted


def with_catalog_allowed(tokenizer, enc: Encoded, catalog: Catalog, n_lines: list[int]) -> tuple[Encoded, float]:
    """``enc`` with `catalog_allowed` for every completion (each a list of ``n_lines[i]`` items ending with
    the turn end); and the share of completion tokens whose loss is restricted."""
    constraints = CatalogConstraints(tokenizer, catalog)
    full, allowed, covered = torch.arange(len(tokenizer)), [], 0  # one shared tensor for every fallback
    for completion, k in zip(enc.completions, n_lines, strict=True):
        ids, n = catalog_allowed(constraints, completion, constraints.row_constraint(k), full)
        allowed.append(ids)
        covered += n
    total = sum(len(c) for c in enc.completions)
    return Encoded(enc.prompts, enc.completions, enc.truncated, allowed), covered / max(1, total)


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


def batch_allowed(enc: Encoded, index: list[int]) -> list[torch.Tensor] | None:
    """The allowed ids of a `collate`d batch's scored tokens, row by row (what `logits.completion_loss` takes)."""
    if enc.allowed is None:
        return None
    return [a for i in index for a in enc.allowed[i]]


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
