"""A small synthetic world for Stage 1 tests: the real generator, cut down so embedding stays cheap."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import polars as pl

from convrec import artifacts

N_ITEMS, N_TRAIN, N_EVAL = 60, 40, 20


@lru_cache(maxsize=1)
def _generated(tmp: str) -> Path:
    from convrec.data.synth import generate

    generate(tmp, seed=0)
    return Path(tmp)


def small_world(out: Path) -> Path:
    """The seed-0 world with its first 60 items, 40 train and 20 val/test samples (+ latent.parquet).
    Seen and ground-truth items outside the 60 simply do not resolve, as out-of-catalog mentions."""
    src = _generated(str(out.parent / "_synth_full"))
    out.mkdir(parents=True, exist_ok=True)
    catalog = pl.read_parquet(src / "catalog.parquet").head(N_ITEMS)
    artifacts.write(catalog, out / "catalog.parquet", "catalog", stage="test")
    for split, n in (("train", N_TRAIN), ("val", N_EVAL), ("test", N_EVAL)):
        artifacts.write(
            pl.read_parquet(src / f"{split}.parquet").head(n), out / f"{split}.parquet", "samples", stage="test"
        )
    pl.read_parquet(src / "latent.parquet").write_parquet(out / "latent.parquet")
    return out
