"""`convrec data import`: logs + catalog -> samples, splits, the data report, one data folder.

Reading the logs is `convrec.data.logs`; this module turns conversations into samples (see that
module's docstring for the rules), splits them, and writes the folder all at once: everything is
built and checked in memory, written into a hidden staging folder next to ``out``, and only then
renamed into place, so a bad input or a kill leaves no half-written folder.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from convrec import artifacts
from convrec.catalog import Catalog, normalize_title
from convrec.data import SPLITS, MatchRules
from convrec.data.catalog_import import check_out_dir, read_catalog_file, samples_frame, write_dataset
from convrec.data.data_report import build_report, write_report
from convrec.data.logs import SPLIT_BY, Conversation, LogFields, read_conversations
from convrec.data.redial import split_of
from convrec.data.report import ImportReport
from convrec.decoding.mentions import MentionFinder
from convrec.errors import ConvrecError

Item = tuple[str, int | None]
_YEAR = re.compile(r"\((\d{4})\)")


@dataclass
class SplitOptions:
    by: str = "auto"  # auto: time when every conversation has a timestamp, else id
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2


def import_logs(
    logs: str | Path,
    catalog_file: str | Path,
    out: str | Path,
    *,
    fmt: str = "auto",
    fields: LogFields | None = None,
    split: SplitOptions | None = None,
    require_year: bool = False,
) -> tuple[ImportReport, dict]:
    """Import, report and write; returns the import report and the data report (also in out/)."""
    fields, split = fields or LogFields(), split or SplitOptions()
    _check_split(split)
    out = check_out_dir(out)
    report = ImportReport(str(logs))
    catalog_df = read_catalog_file(catalog_file, report, reason_prefix="catalog: ")
    if catalog_df.height == 0:
        raise ConvrecError(f"{catalog_file}: no valid catalog rows (need title and year)")
    catalog = Catalog(catalog_df)
    convs = read_conversations(Path(logs), fmt, fields, report)
    rows, gt_found = _samples(convs, catalog, report, by_field=fields.ground_truth is not None, need_year=require_year)
    if not rows:
        how = f"field '{fields.ground_truth}'" if fields.ground_truth else "catalog title named by an assistant turn"
        raise ConvrecError(f"{logs}: no sample: no {how} gave new ground truth ({_reasons(report)})")
    assign = _splits(convs, split)
    frames = _frames(rows, assign)
    basis = (
        f"the items of the field '{fields.ground_truth}'"
        if fields.ground_truth
        else "the titles assistant turns write as 'Title (Year)'"
    )
    data_report = build_report(convs, frames, catalog, report, gt_found, split=_split_note(convs, split), basis=basis)
    _write_all(out, catalog_df, frames, data_report, report, logs, catalog_file, fmt, fields, split, require_year)
    for s in SPLITS:
        report.counts[f"{s} samples"] = frames[s].height
    report.counts["conversations"] = len(convs)
    report.counts["catalog items"] = catalog_df.height
    report.notes.append(f"data report: {Path(out) / 'REPORT.md'}")
    return report, data_report


def _check_split(split: SplitOptions) -> None:
    if split.by not in SPLIT_BY:
        raise ConvrecError(f"--split-by must be one of {', '.join(SPLIT_BY)}, got '{split.by}'")
    if split.val_fraction + split.test_fraction >= 1:
        raise ConvrecError("--val-fraction + --test-fraction must leave some conversations for train")


# -- samples -------------------------------------------------------------------------------------
def _samples(convs: list[Conversation], catalog: Catalog, report: ImportReport, *, by_field: bool, need_year: bool):
    """One row per recommending assistant turn; and (ground-truth items, how many are in the catalog)."""
    finder = MentionFinder(catalog)
    rows, found = [], [0, 0]
    for conv in convs:
        seen: dict[tuple[str, int | None], Item] = {}
        for k, msg in enumerate(conv.messages):
            named = [_item(catalog, r) for r in sorted(finder.rows(msg.content))]
            if need_year:  # "It is great" names no movie; "It (2017)" does
                named = [it for it in named if _with_year(msg.content, it)]
            if msg.role == "assistant":
                report.counts["assistant turns"] = report.counts.get("assistant turns", 0) + 1
                gt = msg.ground_truth if by_field else named
                if by_field and gt:
                    found[0] += len(gt)
                    found[1] += sum(catalog.lookup(t, y, allow_missing_year=True) >= 0 for t, y in gt)
                elif not by_field:  # mentions come from the catalog: check the "Title (Year)" ones written
                    written, hits = _year_mentions(msg.content, catalog)
                    found[0], found[1] = found[0] + written, found[1] + hits
                new = _dedupe([it for it in (gt or []) if _key(it) not in seen])
                context = conv.messages[:k]
                if gt and not new:
                    report.reject("recommending turn whose items were all seen before")
                elif new and not any(m.role == "user" for m in context):
                    report.reject("recommending turn with no user turn before it")
                elif new:
                    rows.append((conv.id, k, context, list(seen.values()), new))
            for it in named + (msg.ground_truth or []):
                seen.setdefault(_key(it), it)
    return rows, found


def _year_mentions(text: str, catalog: Catalog) -> tuple[int, int]:
    """(titles written with a year, how many of them the catalog has): the longest run of up to 8
    words before a "(Year)" that is a catalog title counts as found."""
    written = hits = 0
    for m in _YEAR.finditer(text):
        words = text[max(0, m.start() - 200) : m.start()].split()[-8:]
        year = int(m.group(1))
        written += 1
        hits += any(catalog.lookup(" ".join(words[i:]), year) >= 0 for i in range(len(words)))
    return written, hits


def _item(catalog: Catalog, row: int) -> Item:
    return catalog.titles[row], catalog.years[row]


def _with_year(text: str, item: Item) -> bool:
    return item[1] is not None and re.search(rf"{re.escape(item[0])}\W{{0,3}}{item[1]}", text, re.I) is not None


def _key(item: Item) -> tuple[str, int | None]:
    return normalize_title(item[0]), item[1]


def _dedupe(items: list[Item]) -> list[Item]:
    return list({_key(it): it for it in reversed(items)}.values())[::-1]


# -- splits --------------------------------------------------------------------------------------
def _by_time(convs: list[Conversation], split: SplitOptions) -> bool:
    timed = all(c.time is not None for c in convs)
    if split.by == "time" and not timed:
        raise ConvrecError("--split-by time: some conversations have no timestamp (see --time-field)")
    return split.by == "time" or (split.by == "auto" and timed)


def _splits(convs: list[Conversation], split: SplitOptions) -> dict[str, str]:
    """Conversation id -> split: oldest to newest by time, else a seeded hash of the id."""
    if not _by_time(convs, split):
        return {c.id: split_of(c.id, split.seed, split.val_fraction, split.test_fraction) for c in convs}
    ordered = sorted(convs, key=lambda c: (c.time, c.id))
    n = len(ordered)
    n_test, n_val = round(n * split.test_fraction), round(n * split.val_fraction)
    out = {}
    for i, c in enumerate(ordered):
        out[c.id] = "test" if i >= n - n_test else "val" if i >= n - n_test - n_val else "train"
    return out


def _split_note(convs: list[Conversation], split: SplitOptions) -> str:
    if _by_time(convs, split):
        return "by time (oldest conversations train, newest test)"
    return f"by a seeded hash of the conversation id (seed {split.seed})"


def _frames(rows: list, assign: dict[str, str]) -> dict[str, pl.DataFrame]:
    cols = {s: {c: [] for c in artifacts.SAMPLES.required} for s in SPLITS}
    for conv_id, k, context, seen, new in rows:
        c = cols[assign[conv_id]]
        sid = f"{conv_id}:{k}"
        c["sample_id"].append(sid)
        c["conversation_id"].append(sid)  # each sample is its own prompt (remap asks once per conversation id)
        c["messages"].append([{"role": m.role, "content": m.content} for m in context])
        c["seen"].append([{"title": t, "year": y} for t, y in seen])
        c["ground_truth"].append([{"title": t, "year": y} for t, y in new])
    return {s: samples_frame(c) for s, c in cols.items()}


# -- writing -------------------------------------------------------------------------------------
def _write_all(out: Path, catalog_df, frames, data_report, report, logs, catalog_file, fmt, fields, split, need_year):
    """Everything into a staging folder, then one rename into place (an old folder is replaced)."""
    stage = out.parent / f".{out.name}.importing"
    old = out.parent / f".{out.name}.replaced"
    for p in (stage, old):
        shutil.rmtree(p, ignore_errors=True)
    params = {"format": fmt, "fields": vars(fields), "split": vars(split), "require_year": need_year}
    inputs = [Path(logs), Path(catalog_file)]
    try:
        write_dataset(stage, catalog_df, frames, stage="data.import", params=params, inputs=inputs, rules=MatchRules())
        write_report(stage, data_report, report)
        if out.exists():
            out.rename(old)
        stage.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _reasons(report: ImportReport) -> str:
    return ", ".join(f"{n} {r}" for r, n in report.rejected.most_common()) or "nothing was rejected"
