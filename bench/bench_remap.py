"""Remap throughput against the 7,404-item Reddit-v2 catalog with 20-title teacher lists.

Run with `make bench` (or `python bench/bench_remap.py [--conversations N]`). Teacher lists are
drawn from the catalog with a Zipf popularity and corrupted the way LLMs write them (misspellings,
missing years, invented titles), 20 lines each. The first pass embeds what the cache lacks
(catalog, conversations, out-of-catalog titles) and is reported as embedding time; the timed pass
runs remap end to end (parse, match, score, top-M, output frames) with the embeddings cached.
Target: 10,000 conversations in <= 15 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import load_catalog, misspell  # noqa: E402

from convrec import artifacts  # noqa: E402
from convrec.llm.client import default_cache_dir  # noqa: E402
from convrec.pipeline import remap  # noqa: E402
from convrec.pipeline.common import pipeline_catalog  # noqa: E402
from convrec.pipeline.embed import Embedder  # noqa: E402
from convrec.pipeline.teachers import TeacherOutput  # noqa: E402

MOODS = ["something funny", "a scary night", "a heist", "space adventures", "a tearjerker", "an old western"]


def workload(cat_df: pl.DataFrame, n_conv: int, seed: int = 0) -> tuple[pl.DataFrame, TeacherOutput]:
    rng = random.Random(seed)
    titles, years = cat_df["title"].to_list(), cat_df["year"].to_list()
    weights = [1.0 / (i + 1) ** 0.8 for i in range(len(titles))]
    texts, msgs = [], []
    for c in range(n_conv):
        picks = rng.choices(range(len(titles)), weights=weights, k=20)
        lines = []
        for k, r in enumerate(picks, 1):
            t, y = titles[r], years[r]
            u = rng.random()
            if u < 0.08:
                t, y = f"Invented Picture {rng.randint(0, 10**6)}", rng.randint(1960, 2024)
            elif u < 0.23:
                t = misspell(rng, t)
            elif u < 0.31:
                y = None
            lines.append(f"{k}. {t} ({y})" if y is not None else f"{k}. {t}")
        texts.append("\n".join(lines))
        liked = titles[rng.randrange(len(titles))]
        msgs.append([{"role": "user", "content": f"I loved {liked}. I want {rng.choice(MOODS)} (#{c})."}])
    samples = pl.DataFrame(
        {
            "sample_id": [f"b{c}" for c in range(n_conv)],
            "conversation_id": [f"b{c}" for c in range(n_conv)],
            "messages": msgs,
            "seen": [[] for _ in range(n_conv)],
            "ground_truth": [[] for _ in range(n_conv)],
        },
        schema=artifacts.SAMPLES.required,
    )
    return samples, TeacherOutput(texts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conversations", type=int, default=10_000)
    ap.add_argument("--embedder", default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = Console()
    raw, source = load_catalog()
    catalog, dropped = pipeline_catalog(raw.with_columns(pl.col("year").cast(pl.Int64)))
    samples, teacher = workload(catalog.df, args.conversations)
    emb = Embedder(args.embedder, default_cache_dir(), progress=True)
    cfg = remap.RemapConfig()

    t0 = time.perf_counter()
    remap.run(samples, teacher, catalog, emb, cfg)  # fills the embedding caches
    first = time.perf_counter() - t0
    embedded = emb.computed

    emb2 = Embedder(args.embedder, default_cache_dir(), progress=False)
    t0 = time.perf_counter()
    out, _, stats = remap.run(samples, teacher, catalog, emb2, cfg)
    warm = time.perf_counter() - t0
    assert emb2.computed == 0 and out.height == args.conversations

    table = Table(title=f"remap · {source} ({dropped} duplicate rows dropped) · {os.cpu_count()} CPUs")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("conversations x teacher lines", f"{args.conversations:,} x 20")
    table.add_row("lines exact / fuzzy / unmatched", f"{stats.exact:,} / {stats.fuzzy:,} / {stats.unmatched:,}")
    table.add_row("texts embedded in the first pass", f"{embedded:,}")
    table.add_row("first pass (embedding what the cache lacked + remap)", f"{first:.1f} s")
    table.add_row("remap with embeddings cached", f"{warm:.1f} s")
    table.add_row("  throughput", f"{args.conversations / warm:,.0f} conversations/s")
    table.add_row("  target (10,000 conversations)", "<= 15 s")
    console.print(table)


if __name__ == "__main__":
    main()
