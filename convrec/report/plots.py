"""One small function per figure of `convrec report`; each writes a PNG or returns False when no run has its data.

Figures are built with matplotlib's object API (`Figure`, rendered by Agg), never pyplot: no global
state, no display needed. A run keeps its colour in every figure (its position among all runs), and
the legend sits below the axes so it never hides a curve. SFT and RL runs count steps of different
things (thousands of batches vs a hundred rollout batches), so a step-based figure gets one panel
per kind instead of squashing one onto the other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, PercentFormatter

from convrec.artifacts import atomic_path
from convrec.report.runs import EvalResult, Run

SIZE, DPI = (8, 5), 120
RANKS = (1, 2, 5, 10, 15, 20)
EVAL_KS = (5, 10, 20)
KIND_TITLES = {"sft": "SFT", "rl": "RL", "run": "other runs"}


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over `window` points (rounded up to odd) along axis 0, cut off at the ends.

    pandas' `rolling(window, center=True, min_periods=1)`: centred, so the smoothed curve does not
    lag the raw one; at the ends the window loses its outer half instead of padding (no flat
    stretch) or narrowing to one point (no spike).
    """
    if window <= 1 or len(x) == 0:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0, axis=0), axis=0)
    i = np.arange(len(x))
    lo, hi = np.maximum(0, i - window // 2), np.minimum(len(x), i + window // 2 + 1)
    return (c[hi] - c[lo]) / (hi - lo).reshape(-1, *([1] * (x.ndim - 1)))


def auto_window(n: int, smooth: int, fraction: int = 15) -> int:
    """`smooth` when given; else about 1/`fraction` of the points, at most 50 (noisy per-step statistics)."""
    return smooth if smooth > 0 else max(1, min(50, n // fraction))


def _palette(n: int):
    return colormaps["tab10" if n <= 10 else "tab20"]


def _color(runs: list[Run], run: Run):
    palette = _palette(len(runs))
    return palette(runs.index(run) % palette.N)


def _figure(ncols: int = 1, sharey: bool = False) -> tuple[Figure, list]:
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, sharey=sharey, squeeze=False)[0]
    return fig, list(axes)


def _axes(ax, title: str, xlabel: str, ylabel: str, steps: bool = True) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if steps:  # whole, round step numbers
        ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True, steps=[1, 2, 2.5, 5, 10]))


def _legend(fig: Figure, handles: list | None = None, labels: list[str] | None = None) -> None:
    """One legend for the figure, below the axes; a lone run is named too, so every PNG says whose it is."""
    if handles is None:
        handles, labels = _handles(fig)
    if not labels:
        return
    longest = max(map(len, labels))
    ncols = min(len(labels), 6 if longest <= 10 else 3 if longest <= 26 else 2)
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="small", frameon=False)


def _handles(fig: Figure) -> tuple[list, list[str]]:
    handles, labels = [], []
    for ax in fig.axes:
        for h, lb in zip(*ax.get_legend_handles_labels(), strict=True):
            if lb not in labels:
                handles.append(h)
                labels.append(lb)
    return handles, labels


def _save(fig: Figure | None, path: Path) -> bool:
    """Write the figure (atomically); False when there was nothing to draw."""
    if fig is None:
        return False
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")  # the temporary name has no .png suffix to infer it from
    return True


def _curve(ax, steps: np.ndarray, values: np.ndarray, label: str, color, smooth: int, **kw) -> None:
    """The raw values faint and their moving average on top; a short curve is drawn as is."""
    window = auto_window(len(values), smooth)
    if window > 1:
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
    ax.plot(steps, moving_average(values, window), color=color, label=label, linewidth=1.6, **kw)


def _kind_groups(runs: list[Run], keys: tuple[str, ...]) -> dict[str, list[Run]]:
    """Runs holding any of `keys`, by kind (sft panel first)."""
    groups: dict[str, list[Run]] = {}
    for r in sorted(runs, key=lambda r: list(KIND_TITLES).index(r.kind)):
        if any(len(r.series(k)[0]) for k in keys):
            groups.setdefault(r.kind, []).append(r)
    return groups


def _panel_labels(title: str, kind: str, n_panels: int) -> tuple[str, str]:
    if n_panels == 1:
        return title, "step"
    return f"{title}: {KIND_TITLES[kind]}", f"{KIND_TITLES[kind]} step"


def _wide(values: list[np.ndarray]) -> bool:
    """A positive quantity spanning more than a decade (SFT loss: 7 down to 0.02) reads better on a log scale."""
    v = np.concatenate(values)
    v = v[np.isfinite(v)]
    return bool(len(v)) and v.min() > 0 and v.max() / v.min() > 10


def plot_loss(runs: list[Run], path: Path, smooth: int = 0) -> bool:
    """(1) training loss: SFT cross-entropy and the RL clipped objective live on different scales."""
    groups = _kind_groups(runs, ("loss",))
    if not groups:
        return False
    fig, axes = _figure(len(groups))
    for ax, (kind, group) in zip(axes, groups.items(), strict=True):
        for r in group:
            _curve(ax, *r.series("loss"), r.label, _color(runs, r), smooth)
        log = kind == "sft" and _wide([r.series("loss")[1] for r in group])
        if log:
            ax.set_yscale("log")
            # ticks at 1-2-5 steps labelled 0.05, 0.1, 2 rather than 10^-1 (or none on a short range)
            ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        title, xlabel = _panel_labels("Training loss", kind, len(groups))
        _axes(ax, title, xlabel, "loss (log scale)" if log else "loss")
    _legend(fig)
    return _save(fig, path)


def _rl_lines(runs: list[Run], key: str, path: Path, title: str, ylabel: str, smooth: int) -> bool:
    rl = [r for r in runs if r.kind == "rl" and len(r.series(key)[0])]
    if not rl:
        return False
    fig, (ax,) = _figure()
    for r in rl:
        _curve(ax, *r.series(key), r.label, _color(runs, r), smooth)
    _axes(ax, title, "RL step", ylabel)
    _legend(fig)
    return _save(fig, path)


def plot_reward(runs: list[Run], path: Path, smooth: int = 0) -> bool:
    """(2) mean list reward of the rollouts (sum of the per-rank rewards)."""
    return _rl_lines(runs, "reward_mean", path, "Rollout reward (mean per list)", "reward", smooth)


def plot_kl(runs: list[Run], path: Path, smooth: int = 0) -> bool:
    """(3) KL to the frozen SFT reference."""
    return _rl_lines(runs, "kl", path, "KL divergence to the SFT reference", "KL (k3 estimate)", smooth)


def plot_val_ndcg(runs: list[Run], path: Path) -> bool:
    """(4) validation NDCG@20: a few points per run, unsmoothed with markers; shared y to compare kinds.
    Each panel says which samples it validated on; runs that validated on different samples are
    flagged in red above the panels (SFT on 200 and RL on 50 would make RL "start" below SFT's end)."""
    groups = _kind_groups(runs, ("val_ndcg@20",))
    if not groups:
        return False
    fig, axes = _figure(len(groups), sharey=True)
    samples = {r.validation for g in groups.values() for r in g}
    for i, (ax, (kind, group)) in enumerate(zip(axes, groups.items(), strict=True)):
        mixed = len({r.validation for r in group}) > 1  # within a panel: each run names its own samples
        for r in group:
            label = f"{r.label} ({r.validation or 'samples unknown'})" if mixed else r.label
            ax.plot(*r.series("val_ndcg@20"), color=_color(runs, r), marker="o", label=label)
        title, xlabel = _panel_labels("Validation NDCG@20", kind, len(groups))
        if not mixed and group[0].validation:
            title += f"\n{group[0].validation}"
        _axes(ax, title, xlabel, "NDCG@20" if i == 0 else "")
    if len(samples) > 1:
        fig.suptitle("Runs validated on different samples: compare points within a run only", color="firebrick")
    _legend(fig)
    return _save(fig, path)


def plot_rank_reward(run: Run, path: Path, smooth: int = 0) -> bool:
    """(5) mean reward at ranks 1, 2, 5, 10, 15, 20 over steps, smoothed as in the paper's figures."""
    steps, rewards = run.rank_series()
    ranks = [k for k in RANKS if k <= rewards.shape[1]]
    if not len(steps) or not ranks:
        return False
    window = auto_window(len(steps), smooth, fraction=10)  # per-rank means of a few lists: noisier than a loss
    smoothed = moving_average(rewards, window)
    fig, (ax,) = _figure()
    cmap = colormaps["viridis"]
    for j, k in enumerate(ranks):
        ax.plot(steps, smoothed[:, k - 1], color=cmap(j / max(1, len(ranks) - 1) * 0.9), label=f"rank {k}")
    note = f" (moving average, {2 * (window // 2) + 1} steps)" if window > 1 else ""  # the centred window is odd
    _axes(ax, f"Per-rank reward: {run.label}{note}", "RL step", "mean reward at the rank")
    _legend(fig)
    return _save(fig, path)


def plot_eval_bars(evals: list[EvalResult], path: Path) -> bool:
    """(6) Recall@k and NDCG@k side by side, one bar per prediction file in each k group, with its
    95 % interval as an error bar when the eval JSON has one."""
    ks = [k for k in EVAL_KS if any(f"ndcg@{k}" in e.metrics or f"recall@{k}" in e.metrics for e in evals)]
    if not evals or not ks:
        return False
    fig, axes = _figure(2, sharey=True)
    palette = _palette(len(evals))
    width = 0.8 / len(evals)
    x = np.arange(len(ks))
    for ax, metric, name in zip(axes, ("recall", "ndcg"), ("Recall", "NDCG"), strict=True):
        for i, e in enumerate(evals):
            vals = np.array([e.metrics.get(f"{metric}@{k}", np.nan) for k in ks])
            iv = np.array([e.intervals.get(f"{metric}@{k}", (np.nan, np.nan)) for k in ks]).T  # 2 x len(ks)
            err = np.nan_to_num(np.abs(iv - vals[None, :]), nan=0.0) if e.intervals else None
            offset = (i - (len(evals) - 1) / 2) * width
            bars = ax.bar(x + offset, vals, width, label=e.name, color=palette(i % palette.N), yerr=err, capsize=2)
            if len(evals) <= 3:  # values on the bars while they stay legible
                ax.bar_label(bars, fmt="%.3f", fontsize="x-small", padding=2)
        ax.set_xticks(x, [str(k) for k in ks])
        _axes(ax, f"{name}@k", "cut-off k", "metric value" if metric == "recall" else "", steps=False)
    splits = sorted({e.split for e in evals})
    fig.suptitle(f"Evaluation on the {', '.join(splits)} split")
    _legend(fig)
    return _save(fig, path)


def _share_axis(axes: list, values: list[float]) -> None:
    """A share's y axis ends at 100 % (never 104 %) and starts at most at 90 %, below the lowest value;
    when every value is 100 % (constrained decoding) the panel says so in words instead of showing a
    flat line as if it were a measurement with room above it."""
    finite = [v for v in values if np.isfinite(v)]
    low = min(finite, default=1.0)
    bottom = max(0.0, min(0.9, low - 0.1 * (1 - low)))
    for ax in axes:
        ax.set_ylim(bottom, 1 + 0.015 * (1 - bottom))  # a hair above 100 %: the line stays clear of the frame
        if finite and low == 1.0:
            ax.text(0.5, 0.5, "100 % at every point", transform=ax.transAxes, ha="center", color="0.35")


def plot_in_catalog(runs: list[Run], path: Path, smooth: int = 0) -> bool:
    """(7) share of listed items found in the catalog: rollouts (RL, solid) and validation (dashed, markers)."""
    groups = _kind_groups(runs, ("in_catalog", "val_in_catalog"))
    if not groups:
        return False
    fig, axes = _figure(len(groups), sharey=True)
    styles = set()
    for i, (ax, (kind, group)) in enumerate(zip(axes, groups.items(), strict=True)):
        for r in group:
            if len(r.series("in_catalog")[0]):
                _curve(ax, *r.series("in_catalog"), r.label, _color(runs, r), smooth)
                styles.add("rollouts")
            if len(r.series("val_in_catalog")[0]):
                ax.plot(*r.series("val_in_catalog"), color=_color(runs, r), linestyle="--", marker="o", label=r.label)
                styles.add("validation")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        title, xlabel = _panel_labels("In-catalog ratio", kind, len(groups))
        _axes(ax, title, xlabel, "listed items in the catalog" if i == 0 else "")
    _share_axis(
        axes, [v for g in groups.values() for r in g for k in ("in_catalog", "val_in_catalog") for v in r.series(k)[1]]
    )
    # colour names the run, line style the source: one entry each instead of one per (run, source)
    handles, labels = _handles(fig)
    handles = [Line2D([], [], color=h.get_color(), linewidth=2) for h in handles]
    if len(styles) > 1:
        handles += [Line2D([], [], color="0.3"), Line2D([], [], color="0.3", linestyle="--", marker="o")]
        labels += ["rollouts", "validation"]
    _legend(fig, handles, labels)
    return _save(fig, path)
