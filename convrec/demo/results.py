"""The demo's final table, read from the eval step's JSON: one row per prediction file in the method's
order, each RL row with its paired difference against the SFT row."""

from __future__ import annotations

import json
from pathlib import Path

from convrec import artifacts
from convrec.demo.plan import RL_ROWS, ROWS


def final_rows(metrics_json: Path, data: Path | None = None) -> list[tuple[str, dict]]:
    """(label, summary) per prediction file of the eval JSON, in the table's order. With ``data``
    (the folder the predictions were scored on), each RL row also gets `paired_vs_sft`: its paired
    NDCG/Recall@20 difference against the SFT row on the same test samples (the eval step's
    `--baseline` is co-occurrence)."""
    results = json.loads(Path(metrics_json).read_text())["results"]
    by_path = {Path(p).stem: Path(p) for p in results}
    by_stem = {Path(p).stem: s for p, s in results.items()}
    if data is not None and "sft" in by_path and all(r in by_path for r in RL_ROWS):
        for stem, paired in paired_against(data, [by_path[r] for r in RL_ROWS], by_path["sft"]).items():
            by_stem[stem]["paired_vs_sft"] = paired
    return [(label, by_stem[stem]) for stem, label in ROWS.items() if stem in by_stem]


def paired_against(data: Path, preds: list[Path], base: Path, split: str = "test") -> dict[str, dict]:
    """stem → `convrec eval --baseline`'s paired differences at k = 20, computed by the same code."""
    from convrec.data import load_split, open_catalog
    from convrec.evaluation.evaluate import EvalConfig, compare, evaluate

    catalog, samples, cfg = open_catalog(data), load_split(data, split), EvalConfig(ks=(20,))

    def rows(path: Path):
        return evaluate(artifacts.read(path, artifacts.PREDICTIONS), samples, catalog, cfg)[1]

    base_rows = rows(base)
    return {p.stem: compare(rows(p), base_rows, cfg) for p in preds}
