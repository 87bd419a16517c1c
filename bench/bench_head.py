"""The restricted output head against the full one, per step, on a shared CPU.

For one model (Gemma 3 270M imported with `convrec model import`, or any model folder) and a data
folder, with the Stage 1 SFT set when given:
- SFT step (forward + backward, LoRA r 16, bf16 autocast): the standard loss (262k-row head at every
  list token) against `--catalog-loss` (the head over the catalog-allowed ids);
- one constrained decoding step of 16 test prompts: the decoder over the new tokens, then the head over
  the full vocabulary (masked, what `decode_constrained` did before) or over the allowed ids only.
Times are the process's CPU seconds with one torch thread (robust to other work on a shared machine)
and wall seconds, the median of ``--repeats``.

    python bench/bench_head.py --model M --data R [--sft-set S] [--batch 8] [--repeats 3] [--sft-repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from convrec import artifacts
from convrec.data import item_lists, load_split, open_catalog
from convrec.decoding.cache import cache_kwarg, new_cache
from convrec.decoding.constrained import CatalogConstraints, mask_scores
from convrec.decoding.generate import encode_prompts, left_pad
from convrec.decoding.head import RestrictedHead
from convrec.models.load import load_model, load_tokenizer
from convrec.train import lora, precision
from convrec.train.logits import completion_loss
from convrec.train.sft_data import batch_allowed, collate, encode, ground_truth_targets, with_catalog_allowed


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median CPU s, median wall s) of ``fn()``, after one warm-up call."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu), statistics.median(wall)


def sft_steps(model_dir, data, sft_set, batch: int, max_length: int, repeats: int) -> dict[str, tuple[float, float]]:
    tok = load_tokenizer(model_dir)
    model = lora.wrap(load_model(model_dir, dtype="float32"), 16, 32, 0.0)
    model.train()
    amp = precision.resolve("bf16", model)
    catalog = open_catalog(data)
    if sft_set:
        df = artifacts.read(sft_set, artifacts.SAMPLES).head(batch)
        targets = item_lists(df["ground_truth"])
    else:
        df = load_split(data, "train").head(batch)
        targets = ground_truth_targets(df, catalog, 20)
    enc = encode(tok, df, targets, 20, max_length)
    enc_c, _ = with_catalog_allowed(tok, enc, catalog, [len(t) for t in targets])
    index = list(range(len(enc.prompts)))
    b = collate(enc, index, tok.pad_token_id)
    allowed = batch_allowed(enc_c, index)

    def step(allowed):
        def run():
            model.zero_grad(set_to_none=True)
            with amp.autocast():
                loss, _ = completion_loss(model, b, allowed=allowed)
            loss.backward()

        return run

    return {
        "SFT step, standard loss": timed(step(None), repeats),
        "SFT step, --catalog-loss": timed(step(allowed), repeats),
    }


@torch.no_grad()
def decode_step(model_dir, data, repeats: int) -> dict[str, tuple[float, float]]:
    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype="bfloat16")
    model.eval()
    catalog = open_catalog(data)
    constraints = CatalogConstraints(tok, catalog)
    msgs = load_split(data, "test")["messages"].to_list()[:16]
    ids, attn = left_pad(encode_prompts(tok, msgs, 20, 768), tok.pad_token_id)
    head = RestrictedHead(model)
    states = constraints.states([constraints.row_constraint(20)] * len(msgs))
    allowed = [s.next_ids(torch.device("cpu")) for s in states]  # the first token of a list: the widest set
    cache, key = new_cache(model), cache_kwarg(head.body)
    h = head.body(input_ids=ids, attention_mask=attn, use_cache=True, **{key: cache}).last_hidden_state[:, -1]

    def full():
        mask_scores(head.logits(h), allowed).argmax(-1)

    def restricted():
        z = head.restricted(h, allowed)
        z.to_vocab(z.z.argmax(-1))

    grown = [attn]

    def body():  # the decoder over one new token per row against the prompt's KV cache (which grows by it)
        grown[0] = torch.cat([grown[0], grown[0].new_ones(len(msgs), 1)], dim=1)
        head.body(input_ids=ids[:, -1:], attention_mask=grown[0], use_cache=True, **{key: cache})

    return {
        "decode step: decoder over 16 new tokens": timed(body, repeats),
        "decode step: full head (262k) + mask": timed(full, repeats),
        f"decode step: restricted head ({len(torch.unique(torch.cat(allowed)))} ids)": timed(restricted, repeats),
    }


def rl_step(model_dir, data, repeats: int) -> dict[str, tuple[float, float]]:
    """The parts of an rl step at the default shape (4 prompts × 8 constrained lists of 20): rollouts, the
    reference's scoring (no grad) and the policy's scoring + backward, restricted head against full."""
    from convrec.decoding.generate import list_token_budget
    from convrec.models.load import stop_token_ids
    from convrec.train.rl import token_logps
    from convrec.train.rollout import HFEngine, SamplingConfig

    tok, model = load_tokenizer(model_dir), load_model(model_dir, dtype="float32")
    amp, catalog = precision.resolve("bf16", model), open_catalog(data)
    constraints = CatalogConstraints(tok, catalog)
    prompts = encode_prompts(tok, load_split(data, "train")["messages"].to_list()[:4], 20, 768)
    rows = [constraints.row_constraint(20)] * len(prompts)
    cfg = SamplingConfig(
        8, max_new_tokens=list_token_budget(tok, catalog, 20), stop_ids=tuple(stop_token_ids(tok, model))
    )
    engine, out = HFEngine(model, tok, constraints=constraints), []

    def roll():
        with amp.autocast():
            out[:] = engine.generate(prompts, cfg, rows)

    rows_out = {"rl step: rollouts, 4 × 8 constrained lists": timed(roll, repeats)}
    width = max(len(c) for c in out)
    ids = torch.tensor([c + [tok.pad_token_id] * (width - len(c)) for c in out])
    mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in out])
    allowed = [constraints.replay(r, c) for r, c in zip([r for r in rows for _ in range(8)], out, strict=True)]
    prompts_rep = [p for p in prompts for _ in range(8)]
    model.train()

    def score(allowed, grad: bool):
        def run():
            model.zero_grad(set_to_none=True)
            with torch.set_grad_enabled(grad):
                logp, _ = token_logps(model, prompts_rep, ids, mask, tok.pad_token_id, 1.0, amp, allowed)
            if grad:
                logp.sum().backward()

        return run

    for name, a in (("restricted head", allowed), ("full head", None)):
        rows_out[f"rl step: reference scoring (no grad), {name}"] = timed(score(a, False), repeats)
        rows_out[f"rl step: policy scoring + backward, {name}"] = timed(score(a, True), repeats)
    return rows_out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--sft-set")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="timed decode steps (after one warm-up)")
    ap.add_argument("--sft-repeats", type=int, default=2, help="timed SFT steps per loss (after one warm-up)")
    ap.add_argument("--only", choices=("all", "rl"), default="all", help="rl: the rl step's parts only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    console, rows = Console(), {}
    if args.only == "all":
        rows = decode_step(args.model, args.data, args.repeats)
        console.print(rows)  # as soon as measured: the SFT steps take minutes on a busy machine
        rows |= sft_steps(args.model, args.data, args.sft_set, args.batch, args.max_length, args.sft_repeats)
        console.print(rows)
    rows |= rl_step(args.model, args.data, args.sft_repeats)
    table = Table(title=f"restricted vs full head: {args.model} (1 thread, median of the repeats)")
    for col in ("what", "CPU s", "wall s"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for name, (cpu, wall) in rows.items():
        table.add_row(name, f"{cpu:.3f}", f"{wall:.3f}")
    console.print(table)


if __name__ == "__main__":
    main()
