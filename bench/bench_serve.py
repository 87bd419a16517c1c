"""Constrained vs unconstrained generation time on the tiny model (target: constrained <= 1.3x).

    python bench/bench_serve.py [--model RUN/best --data DIR] [--samples 64] [--k 20]

Without --model it builds the synthetic world and an untrained tiny model in a temporary folder.
Both modes decode the same prompts greedily in batches of 16. An untrained model rarely writes
EOS, so the unconstrained run would be longer only because it never stops: the comparison is
per generated token (the constraint's cost), with totals shown too.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from convrec.catalog import Catalog
from convrec.constrained import CatalogConstraints
from convrec.data import load_catalog, load_split
from convrec.generate import GenerationConfig, encode_prompts, generate_texts
from convrec.mentions import MentionFinder
from convrec.models.load import load_model, load_tokenizer


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "convrec.cli.main", *args], check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder (default: an untrained tiny model)")
    ap.add_argument("--data", help="data folder (default: the synthetic world, seed 0)")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (more than free cores is much slower)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    data = Path(args.data) if args.data else tmp / "data"
    if not args.data:
        _cli("data", "synth", "--out", str(data), "--seed", "0")
    model_dir = args.model or str(tmp / "model")
    if not args.model:
        _cli("model", "init", "--data", str(data), "--out", model_dir)
    tok, model = load_tokenizer(model_dir), load_model(model_dir)
    catalog = Catalog(load_catalog(data))
    convs = load_split(data, "test")["messages"].to_list()[: args.samples]
    prompts = encode_prompts(tok, convs, args.k, 768)
    t0 = time.perf_counter()
    cc = CatalogConstraints(tok, catalog)
    finder = MentionFinder(catalog)
    rows = [cc.row_constraint(args.k, finder.rows_in_messages(m)) for m in convs]
    build_s = time.perf_counter() - t0
    cfg = GenerationConfig(n_items=args.k, max_new_tokens=cc.max_new_tokens(args.k), batch_size=16)

    def run(constrained: bool) -> tuple[float, int]:
        best, tokens = float("inf"), 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            texts = generate_texts(model, tok, prompts, cfg, None, *((cc, rows) if constrained else (None, None)))
            best = min(best, time.perf_counter() - start)
            tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
        return best, tokens

    torch.manual_seed(0)
    plain_s, plain_tok = run(False)
    cons_s, cons_tok = run(True)
    table = Table(title=f"generation, {len(prompts)} prompts, k={args.k}, batch 16, best of {args.repeats}")
    for col in ("mode", "seconds", "tokens", "ms/token", "tokens/s"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    for name, s, n in (("unconstrained", plain_s, plain_tok), ("constrained", cons_s, cons_tok)):
        table.add_row(name, f"{s:.2f}", f"{n:,}", f"{1000 * s / n:.2f}", f"{n / s:,.0f}")
    console = Console()
    console.print(table)
    ratio = (cons_s / cons_tok) / (plain_s / plain_tok)
    console.print(
        f"constrained / unconstrained time per token: {ratio:.2f}x (target <= 1.3x); "
        f"total time ratio {cons_s / plain_s:.2f}x; trie over {len(cc.trie):,} items, "
        f"{len(cc.trie.children):,} nodes, built in {build_s * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
