"""Constrained vs unconstrained generation time on the tiny model (target: constrained <= 1.3x).

    python bench/bench_serve.py [--model RUN/best --data DIR] [--samples 64] [--k 20]

Without --model it builds the synthetic world and an untrained tiny model in a temporary folder.
Both modes decode the same prompts greedily in batches of 16. The two modes write lists of
different lengths (an untrained model unconstrained never writes EOS and runs to the budget),
so the constraint's cost is compared per decoding step (one forward pass of the batch plus, when
constrained, the logits processor); per generated token and totals are shown too.
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

from convrec.data import load_split, open_catalog
from convrec.decoding.constrained import CatalogConstraints
from convrec.decoding.generate import GenerationConfig, encode_prompts, generate_texts
from convrec.decoding.mentions import MentionFinder
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
    catalog = open_catalog(data)
    convs = load_split(data, "test")["messages"].to_list()[: args.samples]
    prompts = encode_prompts(tok, convs, args.k, 768)
    t0 = time.perf_counter()
    cc = CatalogConstraints(tok, catalog)
    finder = MentionFinder(catalog)
    rows = [cc.row_constraint(args.k, finder.rows_in_messages(m)) for m in convs]
    build_s = time.perf_counter() - t0
    cfg = GenerationConfig(n_items=args.k, max_new_tokens=cc.max_new_tokens(args.k), batch_size=16)

    steps = [0]
    model.register_forward_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))

    def run(constrained: bool) -> tuple[float, int, int]:
        best = float("inf")
        for _ in range(args.repeats):
            steps[0] = 0
            start = time.perf_counter()
            texts = generate_texts(model, tok, prompts, cfg, None, *((cc, rows) if constrained else (None, None)))
            best = min(best, time.perf_counter() - start)
        tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
        return best, steps[0], tokens

    plain = run(False)
    cons = run(True)
    table = Table(title=f"generation, {len(prompts)} prompts, k={args.k}, batch 16, best of {args.repeats}")
    for col in ("mode", "seconds", "steps", "ms/step", "tokens", "ms/token"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    for name, (sec, n_steps, n_tok) in (("unconstrained", plain), ("constrained", cons)):
        table.add_row(
            name, f"{sec:.2f}", f"{n_steps:,}", f"{1000 * sec / n_steps:.2f}", f"{n_tok:,}", f"{1000 * sec / n_tok:.2f}"
        )
    console = Console()
    console.print(table)
    per_step = (cons[0] / cons[1]) / (plain[0] / plain[1])
    per_token = (cons[0] / cons[2]) / (plain[0] / plain[2])
    console.print(
        f"constrained / unconstrained: {per_step:.2f}x per decoding step (target <= 1.3x), {per_token:.2f}x per "
        f"token, {cons[0] / plain[0]:.2f}x in total; trie over {len(cc.trie):,} items, "
        f"{len(cc.trie.children):,} nodes, built in {build_s * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
