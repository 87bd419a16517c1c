"""The data report of an imported folder: what came out of the logs, written as ``REPORT.md`` and
``report.json`` next to the data and printed by `convrec data import`.

Figures: conversations, samples per split, turns and tokens per prompt (tokens estimated as the
teacher request would be priced, `convrec.llm.pricing`), the share of ground-truth items found in the
catalog, ground truth never seen in train, catalog coverage, the 20 most frequent items, and the
rows dropped with their reasons.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl

from convrec.artifacts import atomic_path, write_json
from convrec.catalog import Catalog, normalize_title
from convrec.data import SPLITS, item_lists
from convrec.data.report import ImportReport
from convrec.llm.pricing import estimate_tokens
from convrec.prompts import build_messages

TOP = 20


def _summary(values: list[int]) -> dict:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p95": 0, "max": 0}
    a = np.asarray(values)
    return {
        "mean": round(float(a.mean()), 1),
        "median": float(np.median(a)),
        "p95": int(np.percentile(a, 95)),
        "max": int(a.max()),
    }


def build_report(
    convs,
    frames: dict[str, pl.DataFrame],
    catalog: Catalog,
    report: ImportReport,
    gt_found: list[int],
    *,
    split: str,
    basis: str,
) -> dict:
    """Every figure of the report as a JSON-able dict."""
    all_samples = pl.concat([frames[s] for s in SPLITS])
    gt = {s: item_lists(frames[s]["ground_truth"]) for s in SPLITS}
    key = lambda it: (normalize_title(it[0]), it[1])  # noqa: E731
    train_keys = {key(it) for row in gt["train"] for it in row}
    unseen = {}
    for s in ("val", "test"):
        items = [key(it) for row in gt[s] for it in row]
        unseen[s] = {
            "items": len(items),
            "never_in_train": sum(k not in train_keys for k in items),
            "share": round(sum(k not in train_keys for k in items) / len(items), 4) if items else None,
        }
    counts = Counter(it for s in SPLITS for row in gt[s] for it in row)
    cat_keys = {key((t, y)) for t, y in zip(catalog.titles, catalog.years, strict=True)}
    as_gt = {key(it) for it in counts} & cat_keys
    seen_keys = {key(it) for row in item_lists(all_samples["seen"]) for it in row} & cat_keys
    messages = all_samples["messages"].to_list()
    in_catalog = (
        {"items": gt_found[0], "in_catalog": gt_found[1], "share": round(gt_found[1] / gt_found[0], 4), "basis": basis}
        if gt_found[0]
        else {"note": "no ground-truth item to check", "basis": basis}
    )
    return {
        "conversations": len(convs),
        "conversations_with_samples": len({sid.rsplit(":", 1)[0] for sid in all_samples["sample_id"].to_list()}),
        "split": split,
        "samples": {s: frames[s].height for s in SPLITS},
        "turns_per_prompt": _summary([len(m) for m in messages]),
        "tokens_per_prompt": _summary([estimate_tokens(build_messages(m)) for m in messages]),
        "ground_truth_in_catalog": in_catalog,
        "ground_truth_never_in_train": unseen,
        "catalog_coverage": {
            "items": len(catalog),
            "as_ground_truth": len(as_gt),
            "share_as_ground_truth": round(len(as_gt) / len(catalog), 4),
            "as_ground_truth_or_seen": len(as_gt | seen_keys),
        },
        "top_items": [{"item": _label(it), "count": n} for it, n in counts.most_common(TOP)],
        "dropped": dict(report.rejected.most_common()),
    }


def _label(item: tuple[str, int | None]) -> str:
    return f"{item[0]} ({item[1]})" if item[1] is not None else item[0]


def markdown(r: dict) -> str:
    """REPORT.md: the same figures for a person."""
    t, k = r["turns_per_prompt"], r["tokens_per_prompt"]
    lines = [
        "# Data report",
        "",
        f"- conversations: {r['conversations']:,} ({r['conversations_with_samples']:,} gave samples)",
        "- samples: " + ", ".join(f"{s} {n:,}" for s, n in r["samples"].items()) + f"; split {r['split']}",
        f"- turns per prompt: mean {t['mean']}, median {t['median']}, p95 {t['p95']}, max {t['max']}",
        f"- tokens per prompt (estimated, 4 characters a token): mean {k['mean']}, median {k['median']}, "
        f"p95 {k['p95']}, max {k['max']}",
    ]
    g = r["ground_truth_in_catalog"]
    lines.append(
        f"- ground-truth items found in the catalog: {g['in_catalog']:,} of {g['items']:,} "
        f"({g['share']:.1%}; {g['basis']})"
        if "share" in g
        else f"- ground-truth items found in the catalog: {g['note']} ({g['basis']})"
    )
    for s, u in r["ground_truth_never_in_train"].items():
        share = f"{u['share']:.1%}" if u["share"] is not None else "n/a"
        lines.append(f"- {s} ground truth never in train: {u['never_in_train']:,} of {u['items']:,} ({share})")
    c = r["catalog_coverage"]
    lines += [
        f"- catalog coverage: {c['as_ground_truth']:,} of {c['items']:,} items are ground truth somewhere "
        f"({c['share_as_ground_truth']:.1%}); {c['as_ground_truth_or_seen']:,} appear as ground truth or seen",
        "",
        f"## The {TOP} most frequent ground-truth items",
        "",
        "| item | samples |",
        "|---|---:|",
        *[f"| {x['item']} | {x['count']:,} |" for x in r["top_items"]],
        "",
        "## Dropped, and why",
        "",
        "| reason | count |",
        "|---|---:|",
        *[f"| {reason} | {n:,} |" for reason, n in r["dropped"].items()],
    ]
    if not r["dropped"]:
        lines.append("| nothing was dropped | 0 |")
    return "\n".join(lines) + "\n"


def write_report(folder: Path, r: dict, report: ImportReport) -> None:
    write_json({**r, "source": report.source}, Path(folder) / "report.json")
    with atomic_path(Path(folder) / "REPORT.md") as tmp:
        tmp.write_text(markdown(r))
