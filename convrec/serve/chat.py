"""Shaping a chat completion's text the OpenAI way: stop sequences, log-probabilities, streamed deltas.

The engine stops a row once a stop sequence appears; the text returned ends before the first one
(as OpenAI's does). A stream holds back a tail that could still become a stop sequence, so no
client ever sees text the finished answer does not hold.
"""

from __future__ import annotations

from convrec.serve.engine import Engine
from convrec.serve.rows import Job


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop sequence starts in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` that begin some stop sequence (they may yet complete it)."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


def final_text(engine: Engine, job: Job) -> str:
    """The answer: cut before a stop sequence; a constrained list cut by the token budget loses its
    partial last line."""
    text = engine.decode(job.tokens)
    cut = first_stop(text, job.stop)
    if cut is not None:
        return text[:cut]
    return text if job.complete else text.rpartition("\n")[0]


def logprob_entries(engine: Engine, job: Job, first: int, last: int) -> list[dict]:
    """OpenAI's ``logprobs.content`` entries of tokens first..last-1: each token's text, log-probability
    (the distribution it was chosen from, after penalties, biases and the catalog constraint, at
    temperature 1), its UTF-8 bytes and, when asked for, the most likely alternatives."""
    alts = job.alternatives[first:last] if job.top_logprobs else [[] for _ in range(first, last)]
    ids = job.tokens[first:last]
    texts = iter(engine.token_texts(ids + [i for a in alts for i, _ in a]))
    entries = []
    for lp, _ in zip(job.logprobs[first:last], ids, strict=True):
        entries.append({"token": (t := next(texts)), "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []})
    for entry, alt in zip(entries, alts, strict=True):
        entry["top_logprobs"] = [
            {"token": (t := next(texts)), "logprob": lp, "bytes": list(t.encode())} for _, lp in alt
        ]
    return entries


def answer_logprobs(engine: Engine, job: Job, text: str) -> dict:
    """The ``logprobs`` of a whole answer: every token that starts inside the returned text."""
    n = sum(1 for start in engine.token_starts(job.tokens) if start < len(text))
    return {"content": logprob_entries(engine, job, 0, n), "refusal": None}


class ChoiceStream:
    """One streamed choice: turns the tokens the worker sends into text deltas (with their log-probs)."""

    def __init__(self, engine: Engine, job: Job, logprobs: bool) -> None:
        self.engine, self.job, self.logprobs = engine, job, logprobs
        self.count = 0  # tokens received
        self.starts: list[int] = []  # where each token's text starts
        self.decoded = 0  # length of the text of the tokens received
        self.sent = ""
        self.lp_sent = 0  # tokens whose log-probs went out
        self.stopped = False

    def push(self) -> tuple[str, list[dict] | None] | None:
        """After one more token: the new text that is safe to send, or None."""
        if self.stopped:
            return None
        self.count += 1
        self.starts.append(self.decoded)
        text = self.engine.decode(self.job.tokens[: self.count])
        self.decoded = len(text)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return None
        cut = first_stop(text, self.job.stop)
        if cut is not None:
            text, self.stopped = text[:cut], True
        else:
            text = text[: len(text) - held_back(text, self.job.stop)]
        return self._delta(text)

    def finish(self) -> tuple[str, list[dict] | None] | None:
        """Whatever the finished answer holds beyond what was sent (a held-back tail)."""
        text = final_text(self.engine, self.job)
        return self._delta(text) if text.startswith(self.sent) else None

    def _delta(self, text: str) -> tuple[str, list[dict] | None] | None:
        if len(text) <= len(self.sent):
            return None
        delta, self.sent = text[len(self.sent) :], text
        if not self.logprobs:
            return delta, None
        upto = sum(1 for s in self.starts if s < len(text))
        entries = logprob_entries(self.engine, self.job, self.lp_sent, upto)
        self.lp_sent = max(self.lp_sent, upto)
        return delta, entries
