"""Foundation benchmarks: eval throughput and fuzzy-matching throughput, printed as a table.

Run with `make bench` (or `python bench/bench_foundation.py [--samples N]`). The catalog is the
Reddit-v2 catalog from ../shared/data when present (7,404 movies), else a generated one of the
same size, so the numbers stay comparable.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

from convrec.catalog import Catalog
from convrec.evaluation.evaluate import EvalConfig, evaluate

SHARED_CATALOG = Path(__file__).resolve().parents[2] / "shared" / "data" / "reddit_v2" / "catalog.csv"


def load_catalog(n: int = 7404) -> tuple[pl.DataFrame, str]:
    if SHARED_CATALOG.exists():
        df = pl.read_csv(SHARED_CATALOG).with_columns(pl.col("year").cast(pl.Int64))
        source = "reddit-v2 catalog (7,404)"
    else:
        rng = random.Random(0)
        words = [f"{a}{b}" for a in ("Dark", "Lost", "Red", "Last", "Iron", "Blue") for b in ("wood", "fall", "ton")]
        titles = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 4))) + f" {i}" for i in range(n)]
        df = pl.DataFrame({"title": titles, "year": [rng.randint(1950, 2024) for _ in range(n)]})
        source = f"generated ({n:,})"
    return df.with_row_index("item_id").with_columns(pl.col("item_id").cast(pl.String)), source


def misspell(rng: random.Random, title: str) -> str:
    chars = list(title)
    for _ in range(rng.randint(1, 2)):
        i = rng.randrange(len(chars))
        op = rng.random()
        if op < 0.4:
            chars[i] = rng.choice("abcdefghijklmnopqrstuvwxyz")
        elif op < 0.7 and len(chars) > 3:
            del chars[i]
        else:
            chars.insert(i, rng.choice("aeiou"))
    return "".join(chars)


def bench_eval(cat: Catalog, n_samples: int) -> tuple[float, int]:
    rng = random.Random(1)
    n = len(cat)

    def items(k: int) -> list[dict]:
        return [{"title": cat.titles[r], "year": cat.years[r]} for r in rng.sample(range(n), k)]

    samples = pl.DataFrame(
        {
            "sample_id": [str(i) for i in range(n_samples)],
            "seen": [items(2) for _ in range(n_samples)],
            "ground_truth": [items(3) for _ in range(n_samples)],
        }
    )
    preds = pl.DataFrame({"sample_id": samples["sample_id"], "items": [items(20) for _ in range(n_samples)]})
    t = time.perf_counter()
    evaluate(preds, samples, cat, EvalConfig())
    return time.perf_counter() - t, n_samples


def bench_fuzzy(cat: Catalog, n_queries: int) -> tuple[float, int, float]:
    rng = random.Random(2)
    rows = [rng.randrange(len(cat)) for _ in range(n_queries)]
    titles = [misspell(rng, cat.titles[r]) for r in rows]
    t = time.perf_counter()
    res = cat.match(titles, [cat.years[r] for r in rows])
    elapsed = time.perf_counter() - t
    correct = sum(m.row >= 0 and cat.norm[m.row] == cat.norm[r] for m, r in zip(res, rows, strict=True))
    return elapsed, n_queries, correct / n_queries


def bench_false_matches(cat: Catalog, n_queries: int) -> tuple[float, int, float]:
    """Titles that are in no catalog (the synthetic world's) should mostly match nothing."""
    import numpy as np

    from convrec.data.synth_text import titles as _titles

    queries = _titles(np.random.default_rng(3), n_queries)
    t = time.perf_counter()
    res = cat.match([q for q, _ in queries], [y for _, y in queries])
    elapsed = time.perf_counter() - t
    return elapsed, n_queries, sum(m.kind == "fuzzy" for m in res) / n_queries


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=5_000)
    args = ap.parse_args()
    df, source = load_catalog()
    cat = Catalog(df)
    table = Table(title=f"convrec foundation benchmarks · catalog: {source}")
    for col in ("benchmark", "size", "seconds", "throughput", "note"):
        table.add_column(col, justify="right" if col in ("seconds", "throughput") else "left")
    secs, n = bench_eval(cat, args.samples)
    table.add_row("eval (items)", f"{n:,} samples × 20 items", f"{secs:.2f}", f"{n / secs:,.0f} samples/s", "")
    secs, n, acc = bench_fuzzy(cat, args.queries)
    table.add_row(
        "fuzzy match (misspelt titles)",
        f"{n:,} titles",
        f"{secs:.2f}",
        f"{n / secs:,.0f} titles/s",
        f"recovered {acc:.1%}",
    )
    secs, n, fp = bench_false_matches(cat, min(args.queries, 2000))
    table.add_row(
        "fuzzy match (out-of-catalog titles)",
        f"{n:,} titles",
        f"{secs:.2f}",
        f"{n / secs:,.0f} titles/s",
        f"false matches {fp:.1%}",
    )
    Console(width=130).print(table)


if __name__ == "__main__":
    main()
