"""`--dry-run`: what a stage would send, and what it would cost, without sending anything.

`DryRun` is a backend of `LLMClient.complete_many` (``LLMConfig.batch``): the first call that a
stage makes counts the requests the cache lacks, estimates their tokens and prices them, then stops
the command with `DryRunDone`. Re-asks (malformed answers asked again) and later calls (remap's
``--tune`` split, ``--describe``) depend on the answers, so they are not in the count.

Tokens are estimated at 4 characters per token (OpenAI's rule of thumb for English; the model's own
tokenizer is not needed, nor downloadable offline) plus 4 per message; output tokens are bounded by
``max_tokens`` per request, so the output cost printed is an upper bound. Prices are USD per million
tokens; ``--prices FILE`` (JSON, ``{"model": {"input": 2.5, "output": 10}}``, optionally with
``batch_input`` / ``batch_output``) adds or overrides models; a model is looked up by its name, then
by the longest table entry its name starts with (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from convrec.errors import ConvrecError
from convrec.llm.client import LLMClient

# OpenAI list prices (standard tier, USD per 1M tokens) as published in 2025; the Batch API charges
# half. Check them against the pricing page before relying on an estimate, and override with --prices.
PRICES: dict[str, dict[str, float]] = {
    "gpt-4o": {"input": 2.50, "output": 10.00},
    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
    "gpt-4.1": {"input": 2.00, "output": 8.00},
    "gpt-4.1-mini": {"input": 0.40, "output": 1.60},
    "gpt-4.1-nano": {"input": 0.10, "output": 0.40},
}
BATCH_DISCOUNT = 0.5
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


@dataclass
class Estimate:
    model: str
    batch: bool
    requests: int  # to send (distinct, not cached)
    cached: int  # answered from the cache: free
    input_tokens: int
    max_output_tokens: int
    input_usd: float | None  # None: the model has no price
    max_output_usd: float | None

    def rows(self) -> list[tuple[str, str]]:
        def usd(x: float | None) -> str:
            return f"${x:,.2f}" if x is not None else "unknown (no price for this model: pass --prices FILE)"

        return [
            ("model", self.model + (" (Batch API, half price)" if self.batch else " (online)")),
            ("requests to send", f"{self.requests:,}"),
            ("answers already cached (free)", f"{self.cached:,}"),
            ("input tokens (estimated)", f"{self.input_tokens:,}"),
            ("output tokens (at most)", f"{self.max_output_tokens:,}"),
            ("input cost", usd(self.input_usd)),
            ("output cost (at most)", usd(self.max_output_usd)),
        ]


class DryRunDone(Exception):
    """Raised by `DryRun` once it has counted: the command stops there, having sent nothing."""

    def __init__(self, estimate: Estimate) -> None:
        super().__init__(f"dry run: {estimate.requests:,} requests")
        self.estimate = estimate


def estimate_tokens(messages: Sequence[dict]) -> int:
    return sum(TOKENS_PER_MESSAGE + len(m.get("content") or "") // CHARS_PER_TOKEN for m in messages)


def load_prices(path: Path | None) -> dict[str, dict[str, float]]:
    """The built-in table, with a user's file (JSON) on top."""
    table = {k: dict(v) for k, v in PRICES.items()}
    if path is None:
        return table
    try:
        extra = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConvrecError(f"{path}: not a readable JSON price table ({type(e).__name__})") from None
    ok = isinstance(extra, dict) and all(
        isinstance(v, dict) and {"input", "output"} <= set(v) and all(_price(x) for x in v.values())
        for v in extra.values()
    )
    if not ok:
        raise ConvrecError(
            f'{path}: expected {{"model": {{"input": USD per 1M tokens, "output": ...}}}} with non-negative numbers'
        )
    table.update(extra)
    return table


def _price(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x >= 0


def price_of(model: str, table: dict[str, dict[str, float]], batch: bool) -> tuple[float, float] | None:
    """(input, output) USD per 1M tokens, or None when the table has no entry for the model."""
    entry = table.get(model)
    if entry is None:
        prefixes = [k for k in table if model.startswith(k)]
        entry = table[max(prefixes, key=len)] if prefixes else None
    if entry is None:
        return None
    if not batch:
        return entry["input"], entry["output"]
    return (
        entry.get("batch_input", entry["input"] * BATCH_DISCOUNT),
        entry.get("batch_output", entry["output"] * BATCH_DISCOUNT),
    )


@dataclass
class DryRun:
    prices: dict[str, dict[str, float]]
    batch: bool

    def complete(self, client: LLMClient, todo: dict[str, list[int]], requests: Sequence, out: list, desc: str) -> None:
        cfg = client.cfg
        tokens = sum(estimate_tokens(requests[idx[0]]) for idx in todo.values())
        max_out = cfg.max_tokens * len(todo)
        price = price_of(cfg.model, self.prices, self.batch)
        raise DryRunDone(
            Estimate(
                model=cfg.model,
                batch=self.batch,
                requests=len(todo),
                cached=len(requests) - sum(len(v) for v in todo.values()),
                input_tokens=tokens,
                max_output_tokens=max_out,
                input_usd=tokens * price[0] / 1e6 if price else None,
                max_output_usd=max_out * price[1] / 1e6 if price else None,
            )
        )
