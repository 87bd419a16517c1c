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
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from convrec import artifacts
from convrec.catalog import normalize_title
from convrec.data import SPLITS, MatchRules
from convrec.data.catalog_import import catalog_frame, check_out_dir, samples_frame, write_dataset
from convrec.data.report import ImportReport
from convrec.errors import ConvrecError
from convrec.listfmt import Item, parse_line

REQUIRED = ("context", "resp", "rec", "dialog_id", "turn_id")
OPTIONAL_LISTS = ("entity", "entity_name", "prev_entity")
# An id and a name are paired when they share at least this share of the rows either occurs in.
MIN_PAIR_SCORE = 0.5

_YEAR = re.compile(r"\(\s*(\d{4})\s*\)")
# Lower-case words a title may contain between capitalised ones.
_CONNECTORS = {"a", "an", "the", "of", "and", "or", "in", "on", "at", "to", "for", "from", "with", "by", "vs", "vs."}
_CONNECTORS |= {"de", "la", "le", "&", "-", "\u2013", ":"}
# Capitalised only because they start a sentence: never the first word of a guessed title.
_STARTER_WORDS = (
    "I Yes No Or And But If So Did Have Do Also Then Try Maybe Oh Ok Okay OK Well How What Sure Hi Hello Thanks "
    "Great You Perhaps Another Like Watch Check Has Is Are Was Were My It's That's Its Definitely Probably"
)
_STARTERS = set(_STARTER_WORDS.split())
_ABBREVIATIONS = {"vs.", "Mr.", "Mrs.", "Dr.", "St.", "Jr."}


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


_PARENS = re.compile(r"\([^()]*\)")


def _yearless_name(name: str) -> Item | None:
    """(title, None) of a year-less entity name; a DBpedia URI gives its last path part."""
    name = name.strip().strip("<>")
    if "://" in name:
        name = unquote(name.rstrip("/").rsplit("/", 1)[-1]).replace("_", " ")
    title = " ".join(_PARENS.sub(" ", name).split())
    return (title, None) if title else None


def _movie(name: str) -> Item | None:
    """(title, year) of a `Title (Year)` name, else None (actors, genres, year-less titles)."""
    item = parse_line(name).item
    return item if item is not None and item[1] is not None else None


def _guess_title(prefix: str) -> str | None:
    """The title that ends ``prefix``: the run of capitalised words (and connectors) before it."""
    words: list[str] = []
    for w in reversed(prefix.split()):
        if words and w[-1] in ".?!,;" and w not in _ABBREVIATIONS:
            break
        if not (w[0].isupper() or w[0].isdigit() or not w[0].isalpha() or w in _CONNECTORS):
            break
        words.append(w)
    words.reverse()
    while words and (words[0] in _STARTERS or (words[0] in _CONNECTORS and not words[0][0].isupper())):
        words.pop(0)
    if len(words) > 1 and words[0].casefold() == words[1].casefold():
        words.pop(0)  # "The The Blues Brothers": ReDIAL's "The @id" with a name starting "The"
    return " ".join(words) or None


class _Mentions:
    """Finds `Title (Year)` mentions of known names in free text (longest known title wins)."""

    def __init__(self) -> None:
        self.by_year: dict[int, list[str]] = {}
        self._cache: dict[tuple[str, bool], list[Item]] = {}  # contexts repeat turn after turn

    def add(self, item: Item) -> None:
        title, year = item
        titles = self.by_year.setdefault(year, [])
        if title not in titles:
            titles.append(title)
            titles.sort(key=len, reverse=True)
            self._cache.clear()

    def find(self, text: str, *, guess: bool = False) -> list[Item]:
        """Mentions in order; with ``guess``, unknown `Title (Year)` mentions are read heuristically."""
        hit = self._cache.get((text, guess))
        if hit is not None:
            return hit
        out: list[Item] = []
        start = 0
        for m in _YEAR.finditer(text):
            year, prefix = int(m[1]), text[start : m.start()].rstrip()
            start = m.end()  # a title never spans an earlier mention
            title = next((t for t in self.by_year.get(year, ()) if _ends_with_word(prefix, t)), None)
            if title is None and guess:
                title = _guess_title(prefix)
            if title:
                out.append((title, year))
        self._cache[text, guess] = out
        return out


def _ends_with_word(text: str, title: str) -> bool:
    return text.endswith(title) and (len(text) == len(title) or not text[-len(title) - 1].isalnum())


def _name_ids(rows: list[_Row], resp_mentions: list[list[Item]], namer=None) -> dict[int, Item]:
    """Entity id -> `Title (Year)` by co-occurrence over rows (see the module docstring).

    score(id, name) = rows with both / rows with the more frequent of the two, so a generic
    entity present in hundreds of rows ("comedy") never takes a movie's name. Ties go to the
    pair where the id is in ``rec`` and the name in ``resp``, then to the more frequent pair.
    ``namer`` reads an ``entity_name`` (default: a `Title (Year)` movie, else nothing).
    """
    namer = namer or _movie
    id_rows: Counter = Counter()
    name_rows: Counter = Counter()
    both: Counter = Counter()
    rec_resp: Counter = Counter()
    for row, mentioned in zip(rows, resp_mentions, strict=True):
        ids = set(row.entity) | set(row.rec)
        in_resp = set(mentioned)
        names = in_resp | {m for m in map(namer, row.entity_name) if m is not None}
        id_rows.update(ids)
        name_rows.update(names)
        for i in ids:
            for n in names:
                both[i, n] += 1
                if i in row.rec and n in in_resp:
                    rec_resp[i, n] += 1

    def score(pair: tuple[int, Item]) -> float:
        return both[pair] / max(id_rows[pair[0]], name_rows[pair[1]])

    ranked = sorted(both, key=lambda p: (-score(p), -rec_resp[p], -both[p], p))
    names_of: dict[int, Item] = {}
    taken: set[Item] = set()
    for pair in ranked:
        i, n = pair
        if score(pair) < MIN_PAIR_SCORE:
            break
        if i not in names_of and n not in taken:
            names_of[i] = n
            taken.add(n)
    return names_of


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

    if not any(_movie(n) for row in rows for n in row.entity_name):
        return _import_yearless(rows, path, out, report, seed, val_fraction, test_fraction)
    mentions = _Mentions()
    for row in rows:
        for m in map(_movie, row.entity_name):
            if m is not None:
                mentions.add(m)
    resp_mentions = [mentions.find(row.resp, guess=True) for row in rows]
    names_of = _name_ids(rows, resp_mentions)
    for item in names_of.values():
        mentions.add(item)  # names read from resp also count as mentions in later contexts

    samples: dict[str, dict[str, list]] = {s: {c: [] for c in artifacts.SAMPLES.required} for s in SPLITS}
    known: list[Item] = []  # every movie name, in order of appearance: the catalog
    n_unnamed = n_repeats = 0
    for row in rows:
        known += [m for m in map(_movie, row.entity_name) if m is not None]
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
    names_of = _name_ids(rows, [[] for _ in rows], _yearless_name)
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
