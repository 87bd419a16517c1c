"""Import a team's own conversation logs and catalog into a data folder (`convrec data import`).

Log shapes (``--format auto`` tells them apart by the path):

- chat JSONL (``.jsonl``): one conversation per line, ``{"messages": [{"role", "content"}, ...]}``
  (``--messages-field``, ``--role-field``, ``--text-field``: ShareGPT's ``{"conversations": [{"from",
  "value"}]}`` too), optionally with an id (``--id-field``, default ``conversation_id``; else the line number) and a
  timestamp (``--time-field``, default ``timestamp``: epoch seconds or ISO 8601);
- rows (``.csv``, ``.tsv``, ``.parquet``): one message per row with a conversation id, a role and a
  text column (``--id-field``, ``--role-field``, ``--text-field``), in conversation order, or sorted
  by ``--time-field`` within a conversation when that column exists;
- a Hugging Face ``datasets`` folder (``save_to_disk``; every split of a DatasetDict is read): a
  ``messages`` column is read like chat JSONL, otherwise like rows.

Roles: user, human, customer, seeker, client are the user; assistant, bot, gpt, agent, recommender,
ai are the assistant; system messages are dropped (counted); any other role drops its message (counted).

Samples: one per recommending assistant turn, whose prompt is the conversation before it. Ground
truth is the field ``--ground-truth-field`` of that message (or row), a list of ``Title (Year)``
strings or ``{"title", "year"}`` objects (a ``|``-separated string in a CSV cell), when given;
otherwise the catalog items the assistant turn names (the project's `MentionFinder`, as serve reads
mentions). ``seen`` is what the conversation named before the turn (both roles, and earlier ground
truth); ground truth already seen is removed, and a turn left with none is no sample. Each sample
is its own prompt, so its ``conversation_id`` is the sample id (``<conversation>:<turn>``), as in the
ReDIAL importer; splits keep a conversation's samples together: by time (oldest conversations train,
newest test) when every conversation has a timestamp, else by a seeded hash of the conversation id.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

import polars as pl

from convrec.data.report import ImportReport
from convrec.errors import ConvrecError

USER_ROLES = {"user", "human", "customer", "seeker", "client"}
ASSISTANT_ROLES = {"assistant", "bot", "gpt", "agent", "recommender", "ai"}
LogFormat = Literal["auto", "jsonl", "rows", "hf"]
SplitBy = Literal["auto", "id", "time"]
FORMATS, SPLIT_BY = get_args(LogFormat), get_args(SplitBy)


@dataclass
class LogFields:
    """Which field (key or column) holds what; every default is documented on the CLI flag."""

    conversation_id: str = "conversation_id"
    role: str = "role"
    text: str = "content"
    time: str = "timestamp"
    ground_truth: str | None = None
    messages: str = "messages"  # JSONL / datasets: the list of messages (ShareGPT: "conversations")


@dataclass
class Message:
    role: str  # "user" | "assistant"
    content: str
    ground_truth: list[tuple[str, int | None]] | None = None  # from --ground-truth-field, when given


@dataclass
class Conversation:
    id: str
    messages: list[Message] = field(default_factory=list)
    time: float | None = None


# -- reading ---------------------------------------------------------------------------------------
def read_conversations(path: Path, fmt: str, fields: LogFields, report: ImportReport) -> list[Conversation]:
    """The conversations of a log file or folder; rows and lines that cannot be used go to ``report``."""
    path = Path(path)
    if not path.exists():
        raise ConvrecError(f"{path}: no such file or folder")
    fmt = _detect(path) if fmt == "auto" else fmt
    if fmt == "jsonl":
        convs = list(_from_records(_jsonl(path, report), fields, report))
    elif fmt == "rows":
        convs = _from_rows(_table(path), fields, report, str(path))
    elif fmt == "hf":
        convs = _from_hf(path, fields, report)
    else:
        raise ConvrecError(f"unknown --format '{fmt}': choose one of {', '.join(FORMATS)}")
    if not convs:
        raise ConvrecError(f"{path}: no conversation could be read ({_reasons(report) or 'the file is empty'})")
    if not any(m.role == "assistant" for c in convs for m in c.messages):
        raise ConvrecError(f"{path}: no assistant turn in any conversation (roles: see --role-field)")
    return convs


def _detect(path: Path) -> str:
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv", ".parquet", ".pq"):
        return "rows"
    raise ConvrecError(f"{path}: cannot tell the format from '{suffix}'; pass --format jsonl, rows or hf")


def _jsonl(path: Path, report: ImportReport) -> Iterator[dict]:
    if path.is_dir():
        raise ConvrecError(f"{path}: is a folder; chat JSONL is a file (a datasets folder: --format hf)")
    n = 0
    for raw in path.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        n += 1
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            report.reject("malformed JSON line")
            continue
        if not isinstance(obj, dict):
            report.reject("line is not a JSON object")
            continue
        obj.setdefault("_line", n)
        yield obj
    report.counts["lines read"] = n


def _from_records(records, fields: LogFields, report: ImportReport) -> Iterator[Conversation]:
    ids: set[str] = set()
    any_messages = False
    for obj in records:
        msgs = obj.get(fields.messages)
        if not isinstance(msgs, list):
            report.reject(f"no '{fields.messages}' list")
            continue
        any_messages = True
        cid = str(obj.get(fields.conversation_id) or f"line{obj.get('_line', len(ids) + 1)}")
        if cid in ids:
            report.reject("duplicate conversation id")
            continue
        ids.add(cid)
        conv = Conversation(cid, time=_time(obj.get(fields.time)))
        for m in msgs:
            m = m if isinstance(m, dict) else {}
            gt = m.get(fields.ground_truth) if fields.ground_truth else None
            msg = _message(m.get(fields.role), m.get(fields.text), gt, report)
            if msg is not None:
                conv.messages.append(msg)
        if conv.time is None:
            times = [_time(m.get(fields.time)) for m in msgs if isinstance(m, dict)]
            conv.time = min((t for t in times if t is not None), default=None)
        yield conv
    if not any_messages and report.rejected.get(f"no '{fields.messages}' list"):
        raise ConvrecError(
            f"no line has a '{fields.messages}' list: is this chat JSONL ({{\"{fields.messages}\": [...]}} per line; "
            "see --messages-field)?"
        )


def _message(role: Any, content: Any, gt: Any, report: ImportReport) -> Message | None:
    role = str(role or "").strip().lower()
    if role == "system":
        report.reject("system message (dropped)")
        return None
    if role in USER_ROLES:
        role = "user"
    elif role in ASSISTANT_ROLES:
        role = "assistant"
    else:
        report.reject(f"unknown role '{role[:20]}'" if role else "message without a role")
        return None
    if not isinstance(content, str) or not content.strip():
        report.reject("empty message text")
        return None
    return Message(role, content.strip(), _items(gt) if gt is not None else None)


def _items(value: Any) -> list[tuple[str, int | None]]:
    """Ground-truth items from a field: a list of "Title (Year)" / {"title", "year"}, or "A (1999)|B"."""
    from convrec.listfmt import parse_line

    if isinstance(value, str):
        value = [v for v in value.split("|") if v.strip()]
    if not isinstance(value, list | tuple):
        return []
    out = []
    for v in value:
        if isinstance(v, dict) and isinstance(v.get("title"), str):
            year = v.get("year")
            out.append((v["title"].strip(), int(year) if isinstance(year, int | float) and year == year else None))
        elif isinstance(v, str):
            item = parse_line(v).item
            if item is not None:
                out.append(item)
    return out


def _time(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value == value else None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str) and value.strip():
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _table(path: Path) -> pl.DataFrame:
    if path.is_dir():
        raise ConvrecError(f"{path}: is a folder; rows are a CSV or Parquet file (a datasets folder: --format hf)")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            return pl.read_csv(path, separator="\t" if suffix == ".tsv" else ",", infer_schema=False)
        return pl.read_parquet(path)
    except Exception as e:  # polars raises several types for unreadable files
        raise ConvrecError(f"{path}: not a readable {suffix.lstrip('.')} file ({type(e).__name__})") from None


def _from_rows(df: pl.DataFrame, fields: LogFields, report: ImportReport, source: str) -> list[Conversation]:
    need = [fields.conversation_id, fields.role, fields.text]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ConvrecError(
            f"{source}: missing column '{missing[0]}' (rows need {', '.join(need)}; found {', '.join(df.columns)}; "
            "see --id-field, --role-field, --text-field)"
        )
    if fields.ground_truth and fields.ground_truth not in df.columns:
        raise ConvrecError(f"{source}: no column '{fields.ground_truth}' for --ground-truth-field")
    report.counts["rows read"] = df.height
    df = df.with_row_index("_row")
    has_time = fields.time in df.columns
    convs: dict[str, Conversation] = {}
    rows = df.to_dicts()
    if has_time:  # within a conversation, messages in time order (stable: equal times keep file order)
        rows.sort(key=lambda r: (_time(r[fields.time]) is None, _time(r[fields.time]) or 0.0, r["_row"]))
    for r in rows:
        cid = r[fields.conversation_id]
        if cid is None or not str(cid).strip():
            report.reject("row without a conversation id")
            continue
        conv = convs.setdefault(str(cid).strip(), Conversation(str(cid).strip()))
        t = _time(r[fields.time]) if has_time else None
        if t is not None:
            conv.time = t if conv.time is None else min(conv.time, t)
        gt = r.get(fields.ground_truth) if fields.ground_truth else None
        msg = _message(r[fields.role], r[fields.text], gt, report)
        if msg is not None:
            conv.messages.append(msg)
    return [c for c in convs.values() if c.messages]


def _from_hf(path: Path, fields: LogFields, report: ImportReport) -> list[Conversation]:
    try:
        import datasets
    except ImportError:
        raise ConvrecError("reading a datasets folder needs the package 'datasets' (pip install datasets)") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # not a save_to_disk folder
        raise ConvrecError(f"{path}: not a Hugging Face datasets folder ({type(e).__name__})") from None
    parts = list(ds.values()) if isinstance(ds, datasets.DatasetDict) else [ds]
    df = pl.concat([pl.from_arrow(p.data.table) for p in parts], how="vertical_relaxed")
    if fields.messages in df.columns:
        records = ({**r, "_line": i + 1} for i, r in enumerate(df.to_dicts()))
        return list(_from_records(records, fields, report))
    return _from_rows(df, fields, report, str(path))


def _reasons(report: ImportReport) -> str:
    return ", ".join(f"{n} {r}" for r, n in Counter(report.rejected).most_common())
