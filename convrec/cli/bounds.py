"""The valid range of every numeric option: one table keyed by flag, since a flag names one concept in
every command. `apply` attaches the check to each numeric option of the click tree (a bad value is one
line and exit 2, before any work starts) and writes the range into the option's help."""

from __future__ import annotations

import math
from dataclasses import dataclass

import typer


@dataclass(frozen=True)
class Range:
    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        bounds = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        return " and ".join(f"{op} {v:g}" for op, v in bounds if v is not None)

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def bad_values(self) -> list[float]:
        """Values just outside each bound (for the sweep test)."""
        out = [v - 1 for v in (self.ge,) if v is not None] + [v for v in (self.gt,) if v is not None]
        return out + [v + 1 for v in (self.le,) if v is not None] + [v for v in (self.lt,) if v is not None]


AT_LEAST_0, AT_LEAST_1, POSITIVE, SHARE = Range(ge=0), Range(ge=1), Range(gt=0), Range(ge=0, le=1)

RANGES: dict[str, Range] = {
    # sizes and counts
    "--n-items": AT_LEAST_1,
    "--seed": AT_LEAST_0,
    "--year-tolerance": AT_LEAST_0,
    "--bootstrap": AT_LEAST_0,  # 0: no intervals
    "--epochs": AT_LEAST_1,
    "--max-steps": AT_LEAST_1,
    "--batch-size": AT_LEAST_1,
    "--micro-batch-size": AT_LEAST_1,
    "--grad-accum": AT_LEAST_1,
    "--max-length": Range(ge=16),
    "--max-prompt-tokens": Range(ge=16),
    "--max-new-tokens": AT_LEAST_1,
    "--vllm-max-model-len": Range(ge=16),
    "--vllm-gpu-memory": Range(gt=0, le=1),
    "--max-tokens": AT_LEAST_1,
    "--eval-every": AT_LEAST_1,
    "--val-samples": AT_LEAST_1,
    "--keep-last": AT_LEAST_1,
    "--limit": AT_LEAST_1,
    "--group-size": Range(ge=2),  # advantages compare samples of one prompt
    "--prompts-per-step": AT_LEAST_1,
    "--mu": AT_LEAST_1,
    "--lora-r": AT_LEAST_0,  # 0: train every weight
    "--lora-alpha": AT_LEAST_1,
    "--top-m": AT_LEAST_1,
    "--top-n": AT_LEAST_1,
    "--chunk": AT_LEAST_1,
    "--concurrency": AT_LEAST_1,
    "--max-retries": AT_LEAST_0,
    "--judge-retries": AT_LEAST_0,
    "--max-calls": AT_LEAST_1,
    "--max-iter": AT_LEAST_1,
    "--smooth": AT_LEAST_0,
    "--nproc": AT_LEAST_1,
    "--threads": AT_LEAST_1,
    "--port": Range(ge=1, le=65535),
    "--max-batch": AT_LEAST_1,
    "--max-queue": AT_LEAST_1,
    "--max-k": AT_LEAST_1,
    "--max-body-bytes": Range(ge=1024),
    "--batch-max-requests": AT_LEAST_1,
    # rates, weights and probabilities
    "--lr": POSITIVE,
    "--warmup-ratio": Range(ge=0, lt=1),
    "--weight-decay": AT_LEAST_0,
    "--max-grad-norm": POSITIVE,
    "--lora-dropout": Range(ge=0, lt=1),
    "--temperature": POSITIVE,
    "--top-p": Range(gt=0, le=1),
    "--beta": AT_LEAST_0,  # 0: no KL term (and no reference model)
    "--clip-low": Range(gt=0, lt=1),
    "--clip-high": POSITIVE,
    "--overflow-penalty": Range(le=0),
    "--early-eos-penalty": Range(le=0),
    "--exact-eos-bonus": AT_LEAST_0,
    "--duplicate-penalty": AT_LEAST_0,
    "--lambda": AT_LEAST_0,
    "--semantic-weight": AT_LEAST_0,
    "--fraction": Range(gt=0, le=1),
    "--fuzzy-cutoff": Range(ge=0, le=100),
    "--timeout": POSITIVE,
    "--backoff": AT_LEAST_0,
    "--batch-poll": POSITIVE,
    "--batch-wait-ms": AT_LEAST_0,
    "--gamma": AT_LEAST_0,
    "--l2": AT_LEAST_0,
    "--prior": AT_LEAST_0,
    "--val-fraction": SHARE,  # the importers check that the two shares sum to at most 1
    "--test-fraction": SHARE,
}


def numeric(param) -> bool:
    return type(param).__name__.endswith("Option") and not param.is_flag and param.bare_type() in ("int", "float")


def range_of(param) -> Range | None:
    return next((RANGES[o] for o in param.opts if o in RANGES), None)


def commands(root, path: tuple[str, ...] = ()):
    """(path, command) for every leaf command below ``root``."""
    if hasattr(root, "commands"):
        for name, cmd in root.commands.items():
            yield from commands(cmd, (*path, name))
    else:
        yield path, root


def apply(root) -> None:
    """Check every numeric option of every command against its range (after typer's own coercion)."""
    for _, cmd in commands(root):
        for param in cmd.params:
            r = range_of(param) if numeric(param) else None
            if r is None:
                continue
            param.callback = _checked(r, param.callback)
            if param.help and "(valid:" not in param.help:
                param.help = f"{param.help} (valid: {r.describe()})"


def _checked(r: Range, inner):
    def check(ctx, param, value):
        if value is not None and not r.holds(value):
            raise typer.BadParameter(f"must be {r.describe()}, got {value:g}", ctx=ctx, param=param)
        return inner(ctx, param, value) if inner is not None else value

    return check
