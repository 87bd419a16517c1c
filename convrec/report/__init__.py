"""`convrec report`: training curves and eval metrics of runs as PNGs plus one Markdown page.

`runs.py` reads run folders and eval JSON files, `plots.py` draws one figure per function,
`tables.py` writes the tables and the one-line reading, and `write_report` here ties them together
into `OUT/index.md` (the reading, the tables, then the figures or a line saying why one was skipped).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from convrec.artifacts import atomic_path
from convrec.errors import ConvrecError
from convrec.report.runs import EvalResult, Run, load_evals, load_runs
from convrec.report.tables import eval_rows, fmt, paired_rows, reading, run_rows

__all__ = [
    "Plot",
    "Report",
    "EvalResult",
    "Run",
    "load_evals",
    "load_runs",
    "write_report",
    "fmt",
    "run_rows",
    "eval_rows",
    "paired_rows",
    "reading",
]


@dataclass
class Plot:
    title: str
    file: str | None  # None: skipped
    caption: str


@dataclass
class Report:
    index: Path
    figures: list[Plot]


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
            _validation_caption(runs),
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
            "From the eval JSON files given with `--metrics`; error bars: their 95 % intervals.",
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


def _validation_caption(runs: list[Run]) -> str:
    """What the validation points are, and whether runs' points can be compared at all."""
    text = "At each validation step (RL runs validate at step 0, the model they start from)."
    validations = {r.label: r.validation for r in runs if r.has("val_ndcg@20")}
    if len(set(validations.values())) > 1:
        each = "; ".join(f"{label}: {v or 'unknown'}" for label, v in validations.items())
        text += f" **The runs validated on different samples** ({each}): compare points within a run only."
    elif validations and None not in validations.values():
        text += f" Every run on the same samples ({next(iter(validations.values()))})."
    return text


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
    lines = ["# convrec report", "", f"**Reading:** {reading(runs, evals)}", ""]
    lines += [f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.", ""]
    if runs:
        lines += ["## Runs", ""]
        lines += _md_table(*run_rows(runs))
        lines += [f"- **{r.label}**: `{r.path}`" for r in runs] + [""]
        lines += [f"> {note}" for r in runs for note in r.notes] + ([""] if any(r.notes for r in runs) else [])
    if evals:
        lines += ["## Evaluation", "", "Mean [95 % interval] over the split's samples.", ""]
        lines += _md_table(*eval_rows(evals))
        lines += [f"Sources: {', '.join(sorted({f'`{e.source}`' for e in evals}))}", ""]
        paired = paired_rows(evals)
        if paired:
            lines += ["### Paired differences", ""]
            lines += [
                "Each file minus the baseline on the same samples: mean [95 % interval] · share of bootstrap "
                "resamples ≤ 0 (near 0: reliably better than the baseline).",
                "",
            ]
            lines += _md_table(*paired)
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
