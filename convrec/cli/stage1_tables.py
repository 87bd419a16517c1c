"""The summary table each Stage 1 command prints: what its statistics say, one row per fact."""

from __future__ import annotations

import math

from rich.table import Table

from convrec.cli.common import console
from convrec.cli.llm_options import usage_rows


def table(title: str, rows: list[tuple[str, str]]) -> None:
    t = Table(title=title)
    t.add_column("what")
    t.add_column("value", justify="right")
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)


def remap_rows(split: str, stats, t_out, usage: dict | None, tuned, computed: int, n: int) -> list[tuple[str, str]]:
    lines = max(stats.lines, 1)
    rows = [
        ("split / conversations / samples", f"{split} / {stats.conversations:,} / {stats.samples:,}"),
        ("teacher re-asks (answers with no list)", f"{t_out.reasked:,}"),
        ("answers with nothing parseable (marked unparseable)", f"{stats.unparseable:,}"),
        ("teacher lines", f"{stats.lines:,}"),
        ("  exact catalog match", f"{stats.exact:,} ({stats.exact / lines:.1%})"),
        ("  fuzzy match", f"{stats.fuzzy:,} ({stats.fuzzy / lines:.1%})"),
        ("  no match (semantic only)", f"{stats.unmatched:,} ({stats.unmatched / lines:.1%})"),
        *usage_rows(usage),
    ]
    if stats.meant_lines:
        rows += [
            ("lines meaning a catalog item", f"{stats.meant_lines:,}"),
            ("  recovered (argmax of I + S)", f"{stats.recovered:,} ({stats.recovery:.1%})"),
            ("  recovered by the matcher alone", f"{stats.recovered_by_matcher / stats.meant_lines:.1%}"),
            ("meant items in the remap top-n", f"{stats.meant_in_top / max(stats.meant_total, 1):.1%}"),
        ]
    if tuned:
        rows += [
            (f"--tune on val: chosen β / λ (NDCG@{n})", f"{tuned.semantic:g} / {tuned.lam:g} ({tuned.best:.4f})"),
            ("  raw in-catalog lists / β = λ = 1", f"{tuned.raw_ndcg:.4f} / {tuned.ndcg['1.0,1.0']:.4f}"),
        ]
    rows.append(("embedded now (rest cached)", f"{computed:,} texts"))
    return rows


def reflect_rows(stats, judge: str) -> list[tuple[str, str]]:
    from convrec.pipeline.reflect import RATINGS

    rated = max(stats.rated + stats.unrated, 1)
    rows = [
        ("conversations", f"{stats.conversations:,}"),
        ("candidates rated", f"{stats.rated:,}"),
        ("ratings −2/−1/0/1/2", " / ".join(f"{stats.histogram.get(str(k), 0):,}" for k in RATINGS)),
    ]
    if judge != "embed":
        rows += [
            ("judge prompts (chunks)", f"{stats.prompts:,}"),
            ("re-asked (malformed or incomplete)", f"{stats.reasked:,}"),
            ("answers not JSON", f"{stats.not_json:,}"),
            ("ratings out of range (dropped)", f"{stats.out_of_range:,}"),
            ("ratings for unknown numbers", f"{stats.unknown_ids:,}"),
            ("unrated after re-asks (r = 0)", f"{stats.unrated:,} ({stats.unrated / rated:.1%})"),
            *usage_rows(stats.usage),
        ]
    return rows


def adjust_rows(stats, n: int) -> list[tuple[str, str]]:
    rows = [
        ("fit samples / ground-truth items", f"{stats.fit_samples:,} / {stats.fit_gt_items:,}"),
        ("log-lik per gt item (fit): before → after", f"{stats.ll_before:.4f} → {stats.ll_after:.4f}"),
    ]
    if not math.isnan(stats.apply_ll_before):
        rows.append(
            ("log-lik per gt item (--in): before → after", f"{stats.apply_ll_before:.4f} → {stats.apply_ll_after:.4f}")
        )
    rows += [
        ("L-BFGS iterations", f"{stats.iterations}"),
        ("shared scale α / mean w / std b", f"{stats.scale:.3f} / {stats.w_mean:.3f} / {stats.b_std:.3f}"),
        (f"top-{n} items vs ground truth, JS (bits): before → after", f"{stats.js_in:.4f} → {stats.js_out:.4f}"),
        (
            f"top-{n} share of the {stats.popular_items} most popular items (1 %): before → after",
            f"{stats.popular_share_in:.1%} → {stats.popular_share_out:.1%}",
        ),
        ("  ground truth", f"{stats.popular_share_gt:.1%}"),
    ]
    return rows
