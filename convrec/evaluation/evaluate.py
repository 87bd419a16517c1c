"""`convrec eval`'s library side: score prediction frames against a split under a protocol.

Predictions carry raw ``text`` (parsed here with the one parser; he2023 reads it its own way,
`listfmt.he2023_lines`) and/or ``items``; when both are present ``items`` wins. Every sample of the
split is scored: a sample without a prediction counts as an empty list, so a partial prediction
file cannot inflate the numbers. Every mean comes with a 95 % interval (`convrec.evaluation.intervals`): a
seeded bootstrap over samples, or, for he2023, the protocol's own mean +- 1.96 SE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from convrec.catalog import Catalog
from convrec.errors import ConvrecError
from convrec.evaluation import intervals
from convrec.evaluation.metrics import CODES, DUP, HIT, OUT, PROTOCOLS, items_series, judge, per_item, per_list
from convrec.listfmt import he2023_clean, he2023_lines, is_format_valid, parse_list

CONDITIONS = ("rec", "dis", "all")


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (5, 10, 15, 20)
    convention: str = "paper"
    n_items: int = 20  # the list length asked for: the convrec cut, format validity, in-catalog ratio, per-rank hits
    protocol: str = "convrec"
    n_boot: int = 1000  # bootstrap resamples for the intervals (0: none)
    seed: int = 0

    def check(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConvrecError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got '{self.protocol}'")
        if self.convention not in ("paper", "textbook"):
            raise ConvrecError(f"--convention must be 'paper' or 'textbook', got '{self.convention}'")
        if self.convention != "paper" and self.protocol != "convrec":
            raise ConvrecError("--convention textbook applies to --protocol convrec only (the others fix their own)")
        if self.n_items < 1 or self.n_boot < 0:
            raise ConvrecError("--n-items must be >= 1 and --bootstrap >= 0")


def _lines(items: list | None, text: str | None, protocol: str) -> list[tuple[str, int | None]]:
    """One prediction's list: its items, else its parsed text; he2023 cleans titles its own way."""
    if protocol == "he2023":
        lines = [he2023_clean(t, numbering=False) for t, _ in items] if items is not None else he2023_lines(text)
        return [(line, None) for line in lines]
    return items if items is not None else parse_list(text)


def aligned_predictions(preds: pl.DataFrame, samples: pl.DataFrame, protocol: str) -> tuple[pl.Series, list, list]:
    """The predicted lists in split order (a list-of-struct column), the raw texts and whether each
    sample has a prediction. When every prediction has ``items`` (and the protocol reads them as
    they are) the column goes through as Arrow data, never as Python objects."""
    cols = [c for c in ("items", "text") if c in preds.columns]
    p = preds.select("sample_id", *cols).unique("sample_id", keep="last", maintain_order=True)
    df = samples.select("sample_id").join(p.with_columns(_has=pl.lit(True)), on="sample_id", how="left")
    texts = df["text"].to_list() if "text" in df.columns else [None] * df.height
    has = df["_has"].fill_null(False).to_list()
    items = df["items"] if "items" in df.columns else None
    if items is not None and protocol != "he2023" and items.is_null().sum() == df.height - sum(has):
        return items, texts, has
    raw = items.to_list() if items is not None else [None] * df.height
    lists = [
        _lines([(d["title"], d["year"]) for d in own] if own is not None else None, text, protocol) if present else []
        for own, text, present in zip(raw, texts, has, strict=True)
    ]
    return items_series(lists), texts, has


def _format_valid(lists: pl.Series, texts: list, n: int, need_year: bool) -> np.ndarray:
    lengths = lists.list.len().fill_null(0).to_numpy()
    yearly = lists.list.eval(pl.element().struct.field("year").is_not_null()).list.all().fill_null(True).to_numpy()
    from_items = (lengths == n) & (yearly | (not need_year))
    pairs = zip(texts, from_items, strict=True)
    return np.array([is_format_valid(t, n, need_year=need_year) if t is not None else bool(v) for t, v in pairs])


def _summaries(values: dict[str, np.ndarray], mask: np.ndarray, cfg: EvalConfig, analytic: bool) -> dict:
    """Mean and 95 % interval of each metric over the masked samples."""
    names = list(values)
    v = np.stack([values[k][mask] for k in names], axis=1) if names else np.zeros((0, 0))
    n = v.shape[0]
    mean = v.mean(axis=0) if n else np.zeros(len(names))
    if analytic:
        se = intervals.standard_error(v)
        lo, hi = mean - intervals.Z95 * se, mean + intervals.Z95 * se
    else:
        se = intervals.standard_error(v)
        lo, hi = intervals.bootstrap_interval(v, cfg.n_boot, cfg.seed).T if cfg.n_boot else (se * np.nan, se * np.nan)
    return {"n": int(n), **{k: {"mean": float(mean[i]), "se": float(se[i]), "ci95": [float(lo[i]), float(hi[i])]}
                            for i, k in enumerate(names)}}  # fmt: skip


def evaluate(
    preds: pl.DataFrame, samples: pl.DataFrame, catalog: Catalog, cfg: EvalConfig = EvalConfig()
) -> tuple[dict, pl.DataFrame]:
    """Summary metrics (means over samples, with intervals) and a per-sample frame (per
    ground-truth item for he2023)."""
    cfg.check()
    if samples.height == 0:
        raise ConvrecError("the split has no samples to evaluate")
    protocol = PROTOCOLS[cfg.protocol]
    ids = samples["sample_id"].to_list()
    pred_ids = preds["sample_id"].unique()
    unknown = int((~pred_ids.is_in(samples["sample_id"].implode())).sum())
    if pred_ids.len() and unknown == pred_ids.len():
        raise ConvrecError("no prediction's sample_id is in this split: wrong --split or --data?")
    lists, texts, has = aligned_predictions(preds, samples, cfg.protocol)
    j = judge(lists, samples["ground_truth"], samples["seen"], catalog, protocol, cfg.n_items)
    n = cfg.n_items
    m = len(ids)
    which = np.repeat(np.arange(m), np.diff(j.offsets))
    pos = np.arange(len(which)) - j.offsets[which]
    first = pos < n
    hit = j.status == CODES[HIT]
    per_rank = np.bincount(pos[first & hit], minlength=n)[:n]
    count = lambda mask: np.bincount(which[mask], minlength=m)  # noqa: E731
    length = np.diff(j.offsets)
    per_sample = pl.DataFrame(
        {
            "sample_id": ids,
            "n_items": length,
            "n_in_catalog": count(j.status != CODES[OUT]),
            "n_hits": count(hit & (j.rank >= 0)),
            "n_gt": j.n_gt,
            "format_valid": _format_valid(lists, texts, n, catalog.use_year),
        }
    )
    summary: dict = {
        "samples": m,
        "samples_without_prediction": m - int(sum(has)),
        "predictions_not_in_split": unknown,
        "protocol": cfg.protocol,
        "convention": cfg.convention,
        "ks": list(cfg.ks),
    }
    if protocol.per_item:
        metrics = per_item(j, cfg.ks)
        conds = {"rec": ~j.gt_seen, "dis": j.gt_seen, "all": np.ones(len(j.gt_seen), dtype=bool)}
        summary["conditions"] = {c: _summaries(metrics, mask, cfg, analytic=True) for c, mask in conds.items()}
        headline = summary["conditions"]["all"]
        rows = pl.DataFrame(
            {
                "sample_id": np.asarray(ids, dtype=object)[j.gt_list].tolist() if len(j.gt_list) else [],
                "condition": np.where(j.gt_seen, "dis", "rec").tolist(),
                **{k: v for k, v in metrics.items()},
            },
            schema_overrides={"sample_id": pl.String, "condition": pl.String},
        )
    else:
        metrics = per_list(j, cfg.ks, cfg.convention)
        scored = j.n_gt > 0
        headline = _summaries(metrics, scored, cfg, analytic=False)
        rows = per_sample.with_columns(pl.Series(k, v) for k, v in metrics.items())
    summary.update({k: headline[k]["mean"] for k in metrics})
    summary["intervals"] = {k: headline[k]["ci95"] for k in metrics}
    total_first = int(first.sum())
    total_items = int(length.sum())
    summary.update(
        {
            "in_catalog": int((first & (j.status != CODES[OUT])).sum()) / total_first if total_first else 0.0,
            "format_valid": float(per_sample["format_valid"].mean()),
            "duplicate_ratio": int((j.status == CODES[DUP]).sum()) / total_items if total_items else 0.0,
            "mean_list_length": total_items / m,
            "hit_rate_per_rank": (per_rank / m).tolist(),
        }
    )
    return summary, rows


def compare(rows: pl.DataFrame, base: pl.DataFrame, cfg: EvalConfig) -> dict:
    """Paired difference rows - base (same split, same protocol) in Recall@k and NDCG@k: mean, 95 %
    bootstrap interval and the share of resamples <= 0."""
    names = [f"{m}@{k}" for m in ("ndcg", "recall") for k in cfg.ks]
    if "n_gt" in rows.columns:  # per list: the scored samples
        keep = (rows["n_gt"] > 0).to_numpy()
        a, b = rows.filter(pl.Series(keep)), base.filter(pl.Series(keep))
    else:
        a, b = rows, base
    d = intervals.paired_difference(a.select(names).to_numpy(), b.select(names).to_numpy(), cfg.n_boot, cfg.seed)
    return {k: {part: float(d[part][i]) for part in d} for i, k in enumerate(names)}


def metric_columns(ks: Sequence[int], measures: Sequence[str] = ("recall", "ndcg")) -> list[str]:
    return [f"{m}@{k}" for m in measures for k in ks]


def validate_lists(
    model,
    tokenizer,
    samples: pl.DataFrame,
    catalog: Catalog,
    n_items: int,
    max_prompt_tokens: int,
    constrained: bool = False,
) -> dict:
    """Greedy lists for validation samples, judged by `evaluate` (what `convrec eval` reports); sft's and
    rl's periodic validation. No intervals: a training curve needs the point estimates only.
    ``constrained``: the lists `generate --constrained` would write (catalog items, none twice)."""
    from convrec.decoding.generate import GenerationConfig, generate_predictions, list_token_budget

    budget = list_token_budget(tokenizer, catalog, n_items)
    gen = GenerationConfig(
        n_items=n_items, max_new_tokens=budget, max_prompt_tokens=max_prompt_tokens, constrained=constrained
    )
    preds = generate_predictions(model, tokenizer, samples, gen, catalog=catalog)
    summary, _ = evaluate(preds, samples, catalog, EvalConfig(n_items=n_items, n_boot=0))
    model.train()
    keep = ("recall@5", "recall@20", "ndcg@5", "ndcg@20", "in_catalog", "format_valid", "mean_list_length")
    return {k: summary[k] for k in keep}
