"""Constrained decoding: transformers' generate + the catalog processor against `decode_constrained`.

Run with `make bench` (or `python bench/bench_decoding.py [--model M --data DIR]`). Without --model
it builds a synthetic world and a random tiny student with one token per catalog line (the small
demo's kind; speed does not depend on training). Times one RL rollout batch (4 prompts × 8 samples,
20-item lists, sampled at T = 1) and one greedy validation batch (16 prompts), median of --repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import DynamicCache, LogitsProcessorList

from convrec.data import load_split, open_catalog
from convrec.decoding.cache import cache_kwarg
from convrec.decoding.constrained import CatalogConstraints
from convrec.decoding.generate import encode_prompts, left_pad, list_token_budget
from convrec.decoding.loop import decode_constrained
from convrec.models.load import load_model, load_tokenizer, stop_token_ids


def _prefill(model, ids, attn, g: int):
    """As the rl engine does: each prompt but its last token runs once, its cache repeated G times."""
    if g == 1:
        return ids, attn, {}
    cache, key = DynamicCache(), cache_kwarg(model)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    model(input_ids=ids[:, :-1], attention_mask=attn[:, :-1], position_ids=pos[:, :-1], use_cache=True, **{key: cache})
    cache.batch_repeat_interleave(g)
    return ids.repeat_interleave(g, 0), attn.repeat_interleave(g, 0), {key: cache}


def _generate(model, tok, constraints, ids, attn, g, budget, stops, sample: bool):
    ids, attn, cache = _prefill(model, ids, attn, g)
    proc = constraints.processor([constraints.row_constraint(20)] * len(ids))
    model.generate(
        input_ids=ids, attention_mask=attn, do_sample=sample, temperature=1.0 if sample else None, top_k=0,
        top_p=1.0 if sample else None, max_new_tokens=budget, pad_token_id=tok.pad_token_id, eos_token_id=stops,
        logits_processor=LogitsProcessorList([proc]), **cache,
    )  # fmt: skip


def _loop(model, tok, constraints, ids, attn, g, budget, stops, sample: bool):
    ids, attn, cache = _prefill(model, ids, attn, g)
    decode_constrained(
        model, ids, attn, constraints.states([constraints.row_constraint(20)] * len(ids)), max_new_tokens=budget,
        pad_id=tok.pad_token_id, stop_ids=stops, greedy=not sample, cache=next(iter(cache.values()), None),
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="a model folder (default: a random item-token tiny student)")
    ap.add_argument("--data", help="its data folder (default: a synthetic world)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, path = args.data, args.model
        if path is None:
            from convrec.data.synth import generate
            from convrec.models.tiny import init_model

            data, path = str(Path(tmp) / "data"), str(Path(tmp) / "model")
            generate(data, seed=0)
            init_model(data, path, item_tokens=True)
        tok, model = load_tokenizer(path), load_model(path).eval()
        catalog = open_catalog(data)
        constraints, stops = CatalogConstraints(tok, catalog), stop_token_ids(tok, model)
        budget = list_token_budget(tok, catalog, 20)
        msgs = load_split(data, "val")["messages"].to_list()
        table = Table(
            title=f"constrained decoding · 20-item lists · budget {budget} tokens · {torch.get_num_threads()} threads"
        )
        for col in ("batch", "engine", "s per batch", "lists/s", "speed-up"):
            table.add_column(col, justify="left" if col in ("batch", "engine") else "right")
        shapes = (("rollout 4 × 8, sampled", msgs[:4], 8, True), ("validation 16, greedy", msgs[:16], 1, False))
        for name, conversations, g, sample in shapes:
            ids, attn = left_pad(encode_prompts(tok, conversations, 20, 768), tok.pad_token_id)
            base = None
            for engine, fn in (("generate + processor", _generate), ("decode_constrained", _loop)):
                times = []
                for _ in range(args.repeats + 1):
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        fn(model, tok, constraints, ids, attn, g, budget, stops, sample)
                    times.append(time.perf_counter() - t0)
                s = statistics.median(times[1:])  # the first call warms up
                base = base or s
                table.add_row(name, engine, f"{s:.3f}", f"{len(ids) * g / s:,.0f}", f"{base / s:.2f}×")
        Console(width=120).print(table)


if __name__ == "__main__":
    main()
