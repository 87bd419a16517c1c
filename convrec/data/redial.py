"""Import ReDIAL conversations in the jsonl format of He et al. (CIKM 2023).

Each recommender turn with a non-empty ``rec`` becomes one sample: the context utterances as
messages (the last one is the user's), the recommended movies as ground truth, and the movies
mentioned so far as ``seen``.

Entity ids carry no names, so names are recovered from the file itself. ``entity`` and
``entity_name`` are NOT reliably aligned even when their lengths agree (the first row of the
public test split pairs the id of "Police Academy (1984)" with the word "You"), so ids are named
by co-occurrence over the whole file: an id and a `Title (Year)` name that appear in the same
rows (the name in ``entity_name`` or in ``resp``) are paired, strongest first, one name per id.
A `Title (Year)` in the text that no ``entity_name`` spells out is read with a capitalisation
heuristic (for ``resp`` names and ``seen``); movies written without a year ("The Big Lebowski")
get no name and are dropped. The catalog holds only names an ``entity_name`` spells out or that
were paired with an id, not every heuristic reading.

Ground truth excludes movies already mentioned in the conversation (He et al.'s "repeated
items"): metrics never reward a seen item, so keeping them would only make recall unreachable.

Files whose names carry no year at all (INSPIRED in the same format) are imported year-less: an
entity name is used as it stands, or, for a DBpedia URI, its last path part with ``_`` as spaces
and parenthesised parts dropped; ids are named by the same co-occurrence, the catalog holds the
named ids that some ``rec`` recommends, ``seen`` is the named ``prev_entity`` movies, and the
folder's ``matching.json`` records ``use_year: false`` so every later stage matches by title.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from convrec import artifacts
from convrec.catalog import normalize_title
from convrec.data import SPLITS, MatchRules
from convrec.data.catalog_import import catalog_frame, check_out_dir, samples_frame, write_dataset
from convrec.data.redial_names import Mentions, movie_name, name_ids, yearless_name
from convrec.data.report import ImportReport
from convrec.errors import ConvrecError
from convrec.listfmt import Item

REQUIRED = ("context", "resp", "rec", "dialog_id", "turn_id")
OPTIONAL_LISTS = ("entity", "entity_name", "prev_entity")


@dataclass
class _Row:
    dialog_id: str
    turn_id: str
    context: list[str]
    resp: str
    rec: list[int]
    entity: list[int]
    entity_name: list[str]
    prev_entity: list[int]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_row(obj: Any) -> _Row | str:
    """A validated row, or the rejection reason."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    for f in REQUIRED:
        if f not in obj or obj[f] is None:
            return f"missing field '{f}'"
    lists = {f: obj.get(f) or [] for f in OPTIONAL_LISTS}
    checks = {
        "context": isinstance(obj["context"], list) and all(isinstance(u, str) for u in obj["context"]),
        "resp": isinstance(obj["resp"], str),
        "rec": isinstance(obj["rec"], list) and all(_is_int(i) for i in obj["rec"]),
        "dialog_id": isinstance(obj["dialog_id"], str | int) and str(obj["dialog_id"]).strip() != "",
        "turn_id": isinstance(obj["turn_id"], str | int),
        "entity": isinstance(lists["entity"], list) and all(_is_int(i) for i in lists["entity"]),
        "entity_name": isinstance(lists["entity_name"], list) and all(isinstance(n, str) for n in lists["entity_name"]),
        "prev_entity": isinstance(lists["prev_entity"], list) and all(_is_int(i) for i in lists["prev_entity"]),
    }
    for f, ok in checks.items():
        if not ok:
            return f"bad field '{f}'"
    if obj.get("is_user") in (1, True, "1"):
        return "user turn (is_user set)"
    return _Row(
        dialog_id=str(obj["dialog_id"]).strip(),
        turn_id=str(obj["turn_id"]),
        context=obj["context"],
        resp=obj["resp"],
        rec=obj["rec"],
        **lists,
    )


def _read_rows(path: Path, report: ImportReport) -> list[_Row]:
    if not path.exists():
        raise ConvrecError(f"{path}: no such file")
    if path.is_dir():
        raise ConvrecError(f"{path}: is a directory, expected a ReDIAL .jsonl file")
    rows: list[_Row] = []
    keys: set[tuple[str, str]] = set()
    n_lines = 0
    for raw in path.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        n_lines += 1
        try:
            obj = json.loads(raw.decode("utf-8"))  # strict: a corrupt line is rejected, not guessed at
        except UnicodeDecodeError:
            report.reject("not valid UTF-8")
            continue
        except json.JSONDecodeError:
            report.reject("malformed JSON")
            continue
        row = _parse_row(obj)
        if isinstance(row, str):
            report.reject(row)
        elif (row.dialog_id, row.turn_id) in keys:
            report.reject("duplicate dialog_id and turn_id")
        else:
            keys.add((row.dialog_id, row.turn_id))
            rows.append(row)
    report.counts["lines read"] = n_lines
    if not rows:
        reasons = ", ".join(f"{n} {r}" for r, n in report.rejected.most_common()) or "the file is empty"
        raise ConvrecError(f"no valid rows in {path} ({reasons})")
    return rows


def split_of(dialog_id: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """The split of a dialog: a seeded hash of its id, so all its turns land together."""
    digest = hashlib.blake2b(f"{seed}:{dialog_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def _messages(context: list[str]) -> list[dict[str, str]]:
    """Non-empty utterances with alternating roles, the last one the user's."""
    utts = [u.strip() for u in context if u.strip()]
    n = len(utts)
    return [{"role": "user" if (n - 1 - k) % 2 == 0 else "assistant", "content": u} for k, u in enumerate(utts)]


def _clean(item: Item) -> Item:
    return unquote(item[0]), item[1]  # names escape characters like URLs: "What About Bob%3F"


def _dedupe(items: list[Item]) -> list[Item]:
    out, keys = [], set()
    for t, y in items:
        key = (normalize_title(t), y)
        if key not in keys:
            keys.add(key)
            out.append((t, y))
    return out


def _add_sample(cols: dict[str, list], row: _Row, messages: list[dict], seen: list[Item], new: list[Item]) -> None:
    """One turn as one sample (each turn is its own prompt) in a split's columns."""
    cols["sample_id"].append(f"{row.dialog_id}:{row.turn_id}")
    cols["conversation_id"].append(f"{row.dialog_id}:{row.turn_id}")
    cols["messages"].append(messages)
    cols["seen"].append([{"title": t, "year": y} for t, y in seen])
    cols["ground_truth"].append([{"title": t, "year": y} for t, y in new])


def import_redial(
    path: str | Path, out: str | Path, *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2
) -> ImportReport:
    """Import a ReDIAL jsonl file into a data folder, split by dialog id."""
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac <= 1.0:
            raise ConvrecError(f"{name} must be between 0 and 1, got {frac}")
    if val_fraction + test_fraction > 1.0:
        raise ConvrecError(f"val_fraction + test_fraction must be at most 1, got {val_fraction + test_fraction}")
    path, out = Path(path), check_out_dir(out)
    report = ImportReport(str(path))
    rows = _read_rows(path, report)

    if not any(movie_name(n) for row in rows for n in row.entity_name):
        return _import_yearless(rows, path, out, report, seed, val_fraction, test_fraction)
    mentions = Mentions()
    for row in rows:
        for m in map(movie_name, row.entity_name):
            if m is not None:
                mentions.add(m)
    resp_mentions = [mentions.find(row.resp, guess=True) for row in rows]
    names_of = name_ids(rows, resp_mentions)
    for item in names_of.values():
        mentions.add(item)  # names read from resp also count as mentions in later contexts

    samples: dict[str, dict[str, list]] = {s: {c: [] for c in artifacts.SAMPLES.required} for s in SPLITS}
    known: list[Item] = []  # every movie name, in order of appearance: the catalog
    n_unnamed = n_repeats = 0
    for row in rows:
        known += [m for m in map(movie_name, row.entity_name) if m is not None]
        known += [names_of[i] for i in row.rec + row.entity if i in names_of]
        messages = _messages(row.context)
        if not messages:
            report.reject("empty context")
            continue
        if not row.rec:
            report.reject("empty rec")
            continue
        n_unnamed += sum(i not in names_of for i in row.rec)
        gt = _dedupe([_clean(names_of[i]) for i in row.rec if i in names_of])
        if not gt:
            report.reject("no rec id has a movie name")
            continue
        seen = [names_of[i] for i in row.prev_entity if i in names_of]
        seen += [m for u in row.context for m in mentions.find(u, guess=True)]
        seen = _dedupe([_clean(m) for m in seen])
        seen_keys = {(normalize_title(t), y) for t, y in seen}
        new = [(t, y) for t, y in gt if (normalize_title(t), y) not in seen_keys]
        n_repeats += len(gt) - len(new)
        if not new:
            report.reject("ground truth only repeats movies already mentioned")
            continue
        _add_sample(samples[split_of(row.dialog_id, seed, val_fraction, test_fraction)], row, messages, seen, new)
    if n_unnamed:
        report.reject("rec id without a movie name (counted per id, dropped)", n_unnamed)

    catalog, cat_report = catalog_frame(map(_clean, dict.fromkeys(known)), str(path))
    for reason, n in cat_report.rejected.items():
        report.reject(f"catalog: {reason}", n)
    frames = {s: samples_frame(cols) for s, cols in samples.items()}
    if not any(df.height for df in frames.values()):
        raise ConvrecError(f"{path}: no row gave a sample ({', '.join(report.rejected)})")
    params = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction}
    write_dataset(out, catalog, frames, stage="data.redial", params=params, inputs=[path])

    report.counts["dialogs"] = len({row.dialog_id for row in rows})
    report.counts["catalog items"] = catalog.height
    for s in SPLITS:
        report.counts[f"{s} samples"] = frames[s].height
    report.counts["named ids"] = len(names_of)
    report.counts["repeated movies removed from ground truth"] = n_repeats
    return report


def _import_yearless(
    rows: list[_Row], path: Path, out: Path, report: ImportReport, seed: int, val_fraction: float, test_fraction: float
) -> ImportReport:
    """`import_redial` for files whose names carry no year (see the module docstring)."""
    names_of = name_ids(rows, [[] for _ in rows], yearless_name)
    known = [names_of[i] for row in rows for i in row.rec if i in names_of]  # recommended ids: the movies
    movies = {normalize_title(t) for t, _ in known}
    samples: dict[str, dict[str, list]] = {s: {c: [] for c in artifacts.SAMPLES.required} for s in SPLITS}
    n_unnamed = n_repeats = 0
    for row in rows:
        messages = _messages(row.context)
        if not messages:
            report.reject("empty context")
            continue
        if not row.rec:
            report.reject("empty rec")
            continue
        n_unnamed += sum(i not in names_of for i in row.rec)
        gt = _dedupe([names_of[i] for i in row.rec if i in names_of])
        if not gt:
            report.reject("no rec id has a movie name")
            continue
        seen = _dedupe([names_of[i] for i in row.prev_entity if i in names_of])
        seen = [m for m in seen if normalize_title(m[0]) in movies]
        seen_keys = {normalize_title(t) for t, _ in seen}
        new = [m for m in gt if normalize_title(m[0]) not in seen_keys]
        n_repeats += len(gt) - len(new)
        if not new:
            report.reject("ground truth only repeats movies already mentioned")
            continue
        cols = samples[split_of(row.dialog_id, seed, val_fraction, test_fraction)]
        _add_sample(cols, row, messages, [(t, None) for t, _ in seen], [(t, None) for t, _ in new])
    if n_unnamed:
        report.reject("rec id without a movie name (counted per id, dropped)", n_unnamed)
    catalog, cat_report = catalog_frame(dict.fromkeys(known), str(path), require_year=False)
    for reason, n in cat_report.rejected.items():
        report.reject(f"catalog: {reason}", n)
    frames = {s: samples_frame(cols) for s, cols in samples.items()}
    if not any(df.height for df in frames.values()):
        raise ConvrecError(f"{path}: no row gave a sample ({', '.join(report.rejected)})")
    params = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction, "yearless": True}
    rules = MatchRules(use_year=False)
    write_dataset(out, catalog, frames, stage="data.redial", params=params, inputs=[path], rules=rules)
    report.counts["dialogs"] = len({row.dialog_id for row in rows})
    report.counts["catalog items"] = catalog.height
    for s in SPLITS:
        report.counts[f"{s} samples"] = frames[s].height
    report.counts["named ids"] = len(names_of)
    report.counts["repeated movies removed from ground truth"] = n_repeats
    report.notes.append(
        f"no name carries a year: the catalog is year-less, recorded in {out / 'matching.json'} "
        "(eval, rl, baselines and serve match by title; no --no-year needed)"
    )
    return report
