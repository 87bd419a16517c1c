"""Import the Rank-GRPO paper's processed Reddit-v2 release.

The release is a Hugging Face `datasets` DatasetDict saved with ``save_to_disk`` (splits train /
validation / test). Each row holds ``prompt`` (chat messages), ``groundtruth_with_release_year``
(``[title, year]`` pairs) and ``seen_titles`` (titles without years). Several Reddit users
answering one post are several rows with the same prompt: they share a ``conversation_id``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from convrec import artifacts
from convrec.catalog import Catalog
from convrec.data import SPLITS
from convrec.data.catalog_import import (
    catalog_frame,
    check_out_dir,
    parse_year,
    read_catalog_file,
    samples_frame,
    write_dataset,
)
from convrec.data.report import ImportReport
from convrec.errors import ConvrecError
from convrec.listfmt import Item

# Release split name -> convrec split name.
SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}
PROMPT, GROUND_TRUTH, SEEN = "prompt", "groundtruth_with_release_year", "seen_titles"
_BATCH = 4096


def _load(path: Path) -> Any:
    if not path.exists():
        raise ConvrecError(f"{path}: no such folder")
    if not path.is_dir():
        raise ConvrecError(f"{path}: is a file, expected a folder saved with datasets' save_to_disk")
    from datasets import DatasetDict, load_from_disk  # heavy import: only for this command

    try:
        data = load_from_disk(str(path))
    except Exception as e:  # datasets raises several types for folders it cannot read
        raise ConvrecError(f"{path}: not a saved Hugging Face dataset ({type(e).__name__})") from None
    if not isinstance(data, DatasetDict):
        raise ConvrecError(f"{path}: holds a single Dataset, expected a DatasetDict with train/validation/test")
    return data


def _messages(prompt: Any) -> list[dict[str, str]] | None:
    """The prompt as role/content messages, or None when it is not one."""
    if isinstance(prompt, str):  # tolerate a bare prompt string: one user message
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        return None
    out = []
    for m in prompt:
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return None
        out.append({"role": m["role"], "content": m["content"]})
    return out if any(m["content"].strip() for m in out) else None


def _pair(entry: Any) -> Item | None:
    """(title, year) of one ground-truth entry (a [title, year] pair or a {title, year} struct)."""
    if isinstance(entry, Mapping):
        title, year = entry.get("title"), entry.get("year")
    elif isinstance(entry, list | tuple) and len(entry) == 2:
        title, year = entry
    else:
        return None
    year, why = parse_year(year)
    if why or not isinstance(title, str) or not title.strip():
        return None
    return title.strip(), year


def conversation_id(messages: list[dict[str, str]]) -> str:
    """A short hash of the prompt: equal for every user answering the same post."""
    text = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _split_samples(ds: Any, split: str, report: ImportReport, gt_items: dict[Item, None]) -> pl.DataFrame:
    """One split's samples; ground-truth items are added to ``gt_items`` in order of appearance."""
    cols: dict[str, list] = {c: [] for c in artifacts.SAMPLES.required}
    has_seen = SEEN in ds.column_names
    dropped = 0
    index = 0
    for batch in ds.select_columns([PROMPT, GROUND_TRUTH] + ([SEEN] if has_seen else [])).iter(batch_size=_BATCH):
        seens = batch[SEEN] if has_seen else [None] * len(batch[PROMPT])
        for prompt, raw_gt, raw_seen in zip(batch[PROMPT], batch[GROUND_TRUTH], seens, strict=True):
            row, index = index, index + 1
            messages = _messages(prompt)
            if messages is None:
                report.reject("malformed prompt")
                continue
            pairs = [_pair(e) for e in raw_gt] if isinstance(raw_gt, list) else []
            gt = [p for p in pairs if p is not None]
            dropped += len(pairs) - len(gt)
            if not gt:
                report.reject("empty ground truth")
                continue
            gt_items.update(dict.fromkeys(gt))
            raw_seen = raw_seen if isinstance(raw_seen, list) else []
            seen = [t.strip() for t in raw_seen if isinstance(t, str) and t.strip()]
            cols["sample_id"].append(f"{split}:{row}")
            cols["conversation_id"].append(conversation_id(messages))
            cols["messages"].append(messages)
            cols["seen"].append([{"title": t, "year": None} for t in seen])
            cols["ground_truth"].append([{"title": t, "year": y} for t, y in gt])
    if dropped:
        report.reject("malformed ground-truth item (counted per item, dropped)", dropped)
    return samples_frame(cols)


def import_reddit_v2(path: str | Path, out: str | Path, *, catalog: str | Path | None = None) -> ImportReport:
    """Import a Reddit-v2 save_to_disk folder into a data folder; the catalog from ``catalog`` or the data."""
    path, out = Path(path), check_out_dir(out)
    report = ImportReport(str(path))
    data = _load(path)
    chosen: dict[str, str] = {}  # convrec split -> release split
    for name in data:
        split = SPLIT_NAMES.get(name)
        if split is None or split in chosen:
            report.notes.append(f"ignored split '{name}'")
        else:
            chosen[split] = name
    frames: dict[str, pl.DataFrame] = {}
    gt_items: dict[Item, None] = {}
    for split in SPLITS:
        if split not in chosen:
            report.notes.append(f"no {split} split in {path}: wrote an empty {split}.parquet")
            report.counts["missing splits"] = report.counts.get("missing splits", 0) + 1
            continue
        ds = data[chosen[split]]
        missing = [c for c in (PROMPT, GROUND_TRUTH) if c not in ds.column_names]
        if missing:
            raise ConvrecError(f"{path}: split '{chosen[split]}' lacks column '{missing[0]}' (has {ds.column_names})")
        if SEEN not in ds.column_names:
            report.notes.append(f"split '{chosen[split]}' has no '{SEEN}' column: seen left empty")
        frames[split] = _split_samples(ds, split, report, gt_items)
    if not any(df.height for df in frames.values()):
        raise ConvrecError(f"no valid rows in {path} ({', '.join(report.rejected) or 'no train/validation/test rows'})")

    if catalog is not None:
        cat = read_catalog_file(catalog, report, reason_prefix="catalog: ")
        if cat.height == 0:
            raise ConvrecError(f"{catalog}: no valid catalog rows")
        index = Catalog(cat)
        report.counts["ground-truth items not in catalog"] = sum(not index.contains(t, y) for t, y in gt_items)
    else:
        cat, cat_report = catalog_frame(gt_items, str(path))
        for reason, n in cat_report.rejected.items():
            report.reject(f"catalog: {reason}", n)
    params = {"catalog": str(catalog) if catalog is not None else None}
    inputs = [path] if catalog is None else [path, catalog]
    write_dataset(out, cat, frames, stage="data.reddit_v2", params=params, inputs=inputs)
    report.counts["catalog items"] = cat.height
    for split in SPLITS:
        report.counts[f"{split} samples"] = frames[split].height if split in frames else 0
    report.counts["conversations"] = len({c for df in frames.values() for c in df["conversation_id"].to_list()})
    return report
