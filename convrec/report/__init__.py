"""`convrec report`: training curves and eval metrics of runs as PNGs plus one Markdown page.

`runs.py` reads run folders and eval JSON files, `plots.py` draws one figure per function, and
`write_report` here ties them together into `OUT/index.md` (figures, or a line saying why one was
skipped, and the summary tables).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from convrec.artifacts import atomic_path
from convrec.errors import ConvrecError
from convrec.report.runs import EvalResult, Run, load_evals, load_runs

__all__ = ["Plot", "Report", "EvalResult", "Run", "load_evals", "load_runs", "write_report", "fmt"]


@dataclass
class Plot:
    title: str
    file: str | None  # None: skipped
    caption: str


@dataclass
class Report:
    index: Path
    figures: list[Plot]


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
    """The per-run table shared by the console and the page."""
    header = [
        "run",
        "kind",
        "steps",
        "final loss",
        "best val NDCG@20 (step)",
        "final val NDCG@20",
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
                fmt(s["final_reward_mean"]),
                fmt(s["final_in_catalog"], "pct"),
                fmt(s["final_val_in_catalog"], "pct"),
            ]
        )
    return header, rows


def eval_rows(evals: list[EvalResult]) -> tuple[list[str], list[list[str]]]:
    """Every Recall@k / NDCG@k any file has, sorted by k, plus in-catalog and format-valid."""

    def ks(metric: str) -> list[int]:
        return sorted({int(m.split("@")[1]) for e in evals for m in e.metrics if re.fullmatch(rf"{metric}@\d+", m)})

    cols = [f"recall@{k}" for k in ks("recall")] + [f"ndcg@{k}" for k in ks("ndcg")]
    header = ["predictions", "split", *[c.replace("recall", "Recall").replace("ndcg", "NDCG") for c in cols]]
    header += ["in-catalog", "format-valid"]
    rows = [
        [
            e.name,
            e.split,
            *[fmt(e.metrics.get(c), "metric") for c in cols],
            fmt(e.metrics.get("in_catalog"), "pct"),
            fmt(e.metrics.get("format_valid"), "pct"),
        ]
        for e in evals
    ]
    return header, rows


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def _figures(runs: list[Run], evals: list[EvalResult], out: Path, smooth: int) -> list[Plot]:
    """Draw every figure that has data; the others become a 'skipped' line saying what was missing."""
    from convrec.report import plots  # matplotlib only once the inputs have been read and checked

    window = _smoothing(smooth)
    specs = [
        (
            "Training loss",
            "loss.png",
            lambda p: plots.plot_loss(runs, p, smooth),
            f"Per step; {window}.",
            "no run logged `loss`",
        ),
        (
            "Rollout reward",
            "reward.png",
            lambda p: plots.plot_reward(runs, p, smooth),
            f"RL runs: mean reward per sampled list; {window}.",
            "no RL run logged `reward_mean`",
        ),
        (
            "KL to the SFT reference",
            "kl.png",
            lambda p: plots.plot_kl(runs, p, smooth),
            f"RL runs; {window}.",
            "no RL run logged `kl`",
        ),
        (
            "Validation NDCG@20",
            "val_ndcg.png",
            lambda p: plots.plot_val_ndcg(runs, p),
            "At each validation step (RL runs validate at step 0, the SFT model).",
            "no run logged `val_ndcg@20`",
        ),
    ]
    figures = [_draw(title, out, name, draw, caption, why) for title, name, draw, caption, why in specs]
    rl = [r for r in runs if len(r.rank_series()[0])]
    slugs = dict(zip(rl, _unique_slugs([_slug(r.path.name) for r in rl]), strict=True))
    for r in rl:
        figures.append(
            _draw(
                f"Per-rank reward: {r.label}",
                out,
                f"rank_reward_{slugs[r]}.png",
                lambda p, r=r: plots.plot_rank_reward(r, p, smooth),
                f"Mean reward at ranks {', '.join(map(str, plots.RANKS))} over RL steps, moving average.",
                "",
            )
        )
    if not rl:
        figures.append(Plot("Per-rank reward", None, "no RL run logged `rank_reward`"))
    figures.append(
        _draw(
            "Recall / NDCG @k",
            out,
            "eval_bars.png",
            lambda p: plots.plot_eval_bars(evals, p),
            "From the eval JSON files given with `--metrics`.",
            "no eval JSON given (`--metrics M.json`, written by `convrec eval ... --json M.json`)",
        )
    )
    figures.append(
        _draw(
            "In-catalog ratio",
            out,
            "in_catalog.png",
            lambda p: plots.plot_in_catalog(runs, p, smooth),
            "Share of listed items found in the catalog: RL rollouts (solid) and validation lists (dashed).",
            "no run logged `in_catalog` or `val_in_catalog`",
        )
    )
    return figures


def _smoothing(smooth: int) -> str:
    if smooth == 1:
        return "raw values"
    if smooth > 1:
        return f"faint: raw values, bold: moving average over {smooth} steps"
    return "faint: raw values, bold: moving average over about 1/15 of the run (`--smooth N` sets it)"


def _unique_slugs(slugs: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for s in slugs:
        seen[s] = seen.get(s, 0) + 1
        out.append(s if seen[s] == 1 else f"{s}_{seen[s]}")
    return out


def _draw(title: str, out: Path, name: str, draw, caption: str, why: str) -> Plot:
    return Plot(title, name, caption) if draw(out / name) else Plot(title, None, why)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cells(row: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"

    return [cells(header), "|" + "|".join("---" for _ in header) + "|", *map(cells, rows), ""]


def _page(runs: list[Run], evals: list[EvalResult], figures: list[Plot]) -> str:
    lines = ["# convrec report", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.", ""]
    if runs:
        lines += ["## Runs", ""]
        lines += _md_table(*run_rows(runs))
        lines += [f"- **{r.label}**: `{r.path}`" for r in runs] + [""]
        lines += [f"> {note}" for r in runs for note in r.notes] + ([""] if any(r.notes for r in runs) else [])
    if evals:
        lines += ["## Evaluation", ""]
        lines += _md_table(*eval_rows(evals))
        lines += [f"Sources: {', '.join(sorted({f'`{e.source}`' for e in evals}))}", ""]
    lines += ["## Figures", ""]
    for f in figures:
        lines += [f"### {f.title}", ""]
        lines += [f"![{f.title}]({f.file})", "", f.caption, ""] if f.file else [f"*Skipped: {f.caption}.*", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(runs: list[Run], evals: list[EvalResult], out: Path, smooth: int = 0) -> Report:
    """Write the PNGs and OUT/index.md (every file atomically); returns what was drawn and skipped."""
    if out.exists() and not out.is_dir():
        raise ConvrecError(f"{out}: is a file, expected a folder for the report")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConvrecError(f"{out}: cannot create the report folder ({e.strerror})") from None
    figures = _figures(runs, evals, out, smooth)
    index = out / "index.md"
    with atomic_path(index) as tmp:
        tmp.write_text(_page(runs, evals, figures))
    return Report(index, figures)
