"""The report's tables and its one-line reading, shared by the console and `index.md`.

Every eval number carries the 95 % interval `convrec eval` computed, and the paired differences
against `eval --baseline` get their own table: two means whose intervals overlap can still differ
reliably on the same samples, which only the paired difference shows.
"""

from __future__ import annotations

import re

from convrec.report.runs import EvalResult, Run


def fmt(value: float | None, kind: str = "num") -> str:
    """One cell: '–' for a missing value, percentages for ratios, 4 decimals for metrics."""
    if value is None:
        return "–"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "metric":
        return f"{value:.4f}"
    return f"{value:.4g}"


def run_rows(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """The per-run table: what each run reached, and on which validation samples."""
    header = [
        "run",
        "kind",
        "steps",
        "final loss",
        "best val NDCG@20 (step)",
        "final val NDCG@20",
        "validated on",
        "final reward mean",
        "final in-catalog (rollouts)",
        "final val in-catalog",
    ]
    rows = []
    for r in runs:
        s = r.summary()
        best = "–" if s["best_val_ndcg@20"] is None else f"{s['best_val_ndcg@20']:.4f} ({s['best_step']})"
        rows.append(
            [
                r.label,
                r.kind,
                str(s["steps"]),
                fmt(s["final_loss"]),
                best,
                fmt(s["final_val_ndcg@20"], "metric"),
                r.validation or "–",
                fmt(s["final_reward_mean"]),
                fmt(s["final_in_catalog"], "pct"),
                fmt(s["final_val_in_catalog"], "pct"),
            ]
        )
    return header, rows


def metric_names(evals: list[EvalResult]) -> list[str]:
    """Every Recall@k then NDCG@k any file has, sorted by k."""

    def ks(metric: str) -> list[int]:
        return sorted({int(m.split("@")[1]) for e in evals for m in e.metrics if re.fullmatch(rf"{metric}@\d+", m)})

    return [f"recall@{k}" for k in ks("recall")] + [f"ndcg@{k}" for k in ks("ndcg")]


def _title(metric: str) -> str:
    return metric.replace("recall", "Recall").replace("ndcg", "NDCG")


def with_interval(e: EvalResult, metric: str) -> str:
    """'0.1234 [0.100, 0.150]': the mean and its 95 % interval (the mean alone when eval had none)."""
    value = e.metrics.get(metric)
    if value is None or metric not in e.intervals:
        return fmt(value, "metric")
    low, high = e.intervals[metric]
    return f"{value:.4f} [{low:.3f}, {high:.3f}]"


def eval_rows(evals: list[EvalResult]) -> tuple[list[str], list[list[str]]]:
    """Each prediction file's metrics with their 95 % intervals, plus in-catalog and format-valid."""
    cols = metric_names(evals)
    header = ["predictions", "split", "samples", *map(_title, cols), "in-catalog", "format-valid"]
    rows = [
        [
            e.name,
            e.split,
            fmt(e.metrics.get("samples")),
            *[with_interval(e, c) for c in cols],
            fmt(e.metrics.get("in_catalog"), "pct"),
            fmt(e.metrics.get("format_valid"), "pct"),
        ]
        for e in evals
    ]
    return header, rows


def paired_cell(d: dict[str, float] | None) -> str:
    if d is None:
        return "–"
    return f"{d['diff']:+.4f} [{d['low']:+.3f}, {d['high']:+.3f}] · {d['share_le_0']:.3f}"


def paired_rows(evals: list[EvalResult]) -> tuple[list[str], list[list[str]]] | None:
    """Paired differences against `eval --baseline` (mean [95 % interval] · share of resamples <= 0);
    None when no file has them."""
    compared = [e for e in evals if e.paired]
    if not compared:
        return None
    cols = [c for c in metric_names(evals) if any(c in e.paired for e in compared)]
    header = ["predictions", "vs", *map(_title, cols)]
    rows = [[e.name, _stem(e.baseline), *[paired_cell(e.paired.get(c)) for c in cols]] for e in compared]
    return header, rows


def _stem(path: str | None) -> str:
    return re.sub(r"\.[^./]*$", "", (path or "?").rsplit("/", 1)[-1])


def reading(runs: list[Run], evals: list[EvalResult]) -> str:
    """One sentence on what the numbers say: the eval ranking (with intervals and the paired difference
    against the baseline) when there are eval files, else the best validation point of the runs."""
    if evals:
        return _eval_reading(evals)
    return _runs_reading(runs)


def _eval_reading(evals: list[EvalResult]) -> str:
    ndcgs = [c for c in metric_names(evals) if c.startswith("ndcg")]
    metric = next((c for c in reversed(ndcgs) if all(c in e.metrics for e in evals)), ndcgs[-1] if ndcgs else None)
    if metric is None:
        return "The eval files hold no NDCG@k to rank the predictions by."
    ranked = sorted((e for e in evals if metric in e.metrics), key=lambda e: -e.metrics[metric])
    best = ranked[0]
    text = f"On the {best.split} split, **{best.name}** ranks first by {_title(metric)} ({with_interval(best, metric)})"
    if len(ranked) > 1:
        second = ranked[1]
        text += f", ahead of {second.name} ({second.metrics[metric]:.4f})"
        if metric in best.intervals and metric in second.intervals:
            overlap = best.intervals[metric][0] <= second.intervals[metric][1]
            text += "; their 95 % intervals overlap" if overlap else "; their 95 % intervals do not overlap"
    d = best.paired.get(metric)
    if d is not None:
        verdict = "above 0" if d["low"] > 0 else "below 0" if d["high"] < 0 else "an interval that holds 0"
        text += f"; paired with {_stem(best.baseline)}: {d['diff']:+.4f} [{d['low']:+.3f}, {d['high']:+.3f}], {verdict}"
    return text + "."


def _runs_reading(runs: list[Run]) -> str:
    best = [(b, r) for r in runs if (b := r.best("val_ndcg@20")) is not None]
    if not best:
        return "No run has validated yet (no `val_ndcg@20`)."
    (value, step), run = max(best, key=lambda x: x[0][0])
    text = f"The best validation NDCG@20 is {value:.4f}, by **{run.label}** at step {step}"
    if len({r.validation for _, r in best}) > 1:
        text += " (the runs validated on different samples: compare values within a kind only)"
    return text + "."
