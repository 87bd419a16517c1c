"""Reading what `convrec sft` / `convrec rl` left in a run folder, and `convrec eval --json` files.

A run folder holds `metrics.jsonl` (one JSON object per line, each with "step"; training and
validation records are separate lines, validation keys start with "val_") and, when written by
the training loops, `config.json`. Every problem a user can cause is a one-line `ConvrecError`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convrec.errors import ConvrecError

# the names the paper uses for the three levels `convrec rl --level` trains
LEVEL_NAMES = {"rank": "Rank-GRPO", "token": "GRPO", "sequence": "GSPO"}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(eq=False)  # identity: a run is its folder, looked up in dicts and by position
class Run:
    path: Path
    records: list[dict]
    config: dict = field(default_factory=dict)
    label: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """'rl', 'sft' or 'run' (a metrics.jsonl from elsewhere): decides panels and which plots apply."""
        if "level" in self.config or self.has("reward_mean"):
            return "rl"
        if "sft_set" in self.config or self.has("tokens_per_s") or self.has("lr"):
            return "sft"
        return "run"

    def has(self, key: str) -> bool:
        return any(key in r for r in self.records)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the records holding a number under `key`, in logged order."""
        pts = [(r["step"], r[key]) for r in self.records if _number(r.get(key))]
        steps = np.array([p[0] for p in pts], dtype=float)
        return steps, np.array([p[1] for p in pts], dtype=float)

    def rank_series(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, [steps x N]) of the per-rank rewards; records whose list has another length are left out."""
        rows = [(r["step"], r["rank_reward"]) for r in self.records if isinstance(r.get("rank_reward"), list)]
        if not rows:
            return np.zeros(0), np.zeros((0, 0))
        n = Counter(len(v) for _, v in rows).most_common(1)[0][0]
        rows = [(s, v) for s, v in rows if len(v) == n and all(_number(x) for x in v)]
        return np.array([s for s, _ in rows], dtype=float), np.array([v for _, v in rows], dtype=float).reshape(-1, n)

    def final(self, key: str) -> float | None:
        _, v = self.series(key)
        return float(v[-1]) if len(v) else None

    def best(self, key: str) -> tuple[float, int] | None:
        """Highest value and its first step, as the loops pick RUN/best (strictly better replaces)."""
        s, v = self.series(key)
        finite = np.where(np.isnan(v), -np.inf, v)
        if not len(v) or not np.isfinite(finite).any():
            return None
        i = int(np.argmax(finite))
        return float(v[i]), int(s[i])

    @property
    def steps(self) -> int:
        return max((int(r["step"]) for r in self.records), default=0)

    @property
    def validation(self) -> str | None:
        """What the run validated on, from its config: "first N val samples" (+ constrained); None if unknown.
        Curves of runs that differ here are not comparable (sft and rl both take the split's first N)."""
        n = self.config.get("val_samples")
        if not _number(n):
            return None
        return f"first {int(n)} val samples" + (", constrained" if self.config.get("val_constrained") else "")

    def summary(self) -> dict:
        best = self.best("val_ndcg@20")
        return {
            "steps": self.steps,
            "final_loss": self.final("loss"),
            "best_val_ndcg@20": best[0] if best else None,
            "best_step": best[1] if best else None,
            "final_val_ndcg@20": self.final("val_ndcg@20"),
            "final_reward_mean": self.final("reward_mean"),
            "final_in_catalog": self.final("in_catalog"),
            "final_val_in_catalog": self.final("val_in_catalog"),
        }


@dataclass
class EvalResult:
    name: str  # the prediction file's stem, made unique across the given eval files
    source: Path
    split: str
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> 95 % interval
    baseline: str | None = None  # `eval --baseline`'s file, when it compared this one against it
    paired: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> diff, low, high, share_le_0


def read_metrics(path: Path) -> tuple[list[dict], list[str]]:
    """The records of a metrics.jsonl and any notes; a corrupt line is an error naming it.

    A torn last line (no trailing newline) is skipped with a note instead: that is a run still
    being written, which a report may well be looking at.
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConvrecError(f"{path}: cannot read ({type(e).__name__})") from None
    lines = text.split("\n")
    records, notes = [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):  # no newline after it: a write in progress
                notes.append(f"{path}: skipped the unfinished last line {i}")
                continue
            raise ConvrecError(f"{path} line {i}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not _number(rec.get("step")) or not math.isfinite(rec["step"]):
            raise ConvrecError(f"{path} line {i}: expected a JSON object with a numeric 'step'")
        records.append(rec)
    return records, notes


def _read_json(path: Path, what: str) -> object:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConvrecError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}); expected {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConvrecError(f"{path}: cannot read ({type(e).__name__})") from None


def load_run(path: Path) -> Run:
    if not path.exists():
        raise ConvrecError(f"{path}: no such run folder")
    if not path.is_dir():
        hint = " (eval JSON files go with --metrics)" if path.suffix == ".json" else ""
        raise ConvrecError(f"{path}: not a folder, expected a run folder holding metrics.jsonl{hint}")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ConvrecError(f"{path}: no metrics.jsonl, not an sft or rl run folder")
    records, notes = read_metrics(metrics)
    config = {}
    if (path / "config.json").is_file():
        config = _read_json(path / "config.json", "the run's config")
        if not isinstance(config, dict):
            raise ConvrecError(f"{path / 'config.json'}: expected a JSON object")
    if not records:
        notes.append(f"{metrics}: no records yet")
    return Run(path=path, records=records, config=config, notes=notes)


def config_label(run: Run) -> str:
    """RL runs are named by what was trained (the paper's comparisons); anything else by its folder."""
    c = run.config
    if run.kind != "rl" or c.get("level") not in LEVEL_NAMES:
        return run.path.name
    parts = [LEVEL_NAMES[c["level"]]]
    if c["level"] == "rank" and c.get("reward", "exp_inf") != "exp_inf":
        parts.append(f"({c['reward']})")
    if "mu" in c:
        parts.append(f"μ={c['mu']}")
    if c.get("constrained_rollouts"):
        parts.append("constrained")
    if "seed" in c:
        parts.append(f"seed {c['seed']}")
    return " ".join(parts)


def _unique(names: list[str], fallbacks: list[list[str]]) -> list[str]:
    """Each name, or its next fallback while it clashes with another; a counter as the last resort."""
    out = list(names)
    for level in range(max((len(f) for f in fallbacks), default=0)):
        counts = Counter(out)
        out = [f[level] if counts[n] > 1 and level < len(f) else n for n, f in zip(out, fallbacks, strict=True)]
    counts, seen = Counter(out), Counter()
    for i, n in enumerate(out):
        seen[n] += 1
        if counts[n] > 1:
            out[i] = f"{n} #{seen[n]}"
    return out


def load_runs(paths: list[Path]) -> list[Run]:
    """Load every run (the same folder given twice counts once) and give each a distinct label."""
    unique = list({p.resolve(): p for p in paths}.values())
    runs = [load_run(p) for p in unique]
    labels = [config_label(r) for r in runs]
    fallbacks = []
    for lb, r in zip(labels, runs, strict=True):
        where = f"{r.path.resolve().parent.name}/{r.path.name}"
        fallbacks.append([where] if lb == r.path.name else [f"{lb} ({r.path.name})", f"{lb} ({where})"])
    for run, label in zip(runs, _unique(labels, fallbacks), strict=True):
        run.label = label
    return runs


def load_eval(path: Path) -> list[EvalResult]:
    """The per-prediction metrics of one `convrec eval --json` file."""
    if not path.is_file():
        raise ConvrecError(f"{path}: no such eval JSON file" if not path.exists() else f"{path}: not a file")
    obj = _read_json(path, "an eval JSON (convrec eval --json)")
    results = obj.get("results") if isinstance(obj, dict) else None
    if not isinstance(results, dict) or not all(isinstance(m, dict) for m in results.values()):
        raise ConvrecError(
            f"{path}: expected {{'split': ..., 'results': {{name: {{metric: value}}}}}} (convrec eval --json)"
        )
    split = str(obj.get("split", "?"))
    return [
        EvalResult(
            Path(name).stem,
            path,
            split,
            {k: float(v) for k, v in m.items() if _number(v)},
            _intervals(m),
            *_paired(m, name),
        )
        for name, m in results.items()
    ]


def _paired(m: dict, name: str) -> tuple[str | None, dict[str, dict[str, float]]]:
    """`eval --baseline`'s paired differences of one result: (the baseline's file, {metric: parts});
    none for the baseline itself (its difference to itself is 0)."""
    p = m.get("paired_vs_baseline")
    if not isinstance(p, dict) or not isinstance(p.get("baseline"), str) or p["baseline"] == name:
        return None, {}
    parts = ("diff", "low", "high", "share_le_0")
    diffs = {
        k: {part: float(v[part]) for part in parts}
        for k, v in p.items()
        if isinstance(v, dict) and all(_number(v.get(part)) for part in parts)
    }
    return p["baseline"], diffs


def _intervals(m: dict) -> dict[str, tuple[float, float]]:
    """The `intervals` of one result ({metric: [low, high]}), when eval wrote them."""
    iv = m.get("intervals")
    if not isinstance(iv, dict):
        return {}
    return {
        k: (float(v[0]), float(v[1]))
        for k, v in iv.items()
        if isinstance(v, list | tuple) and len(v) == 2 and all(_number(x) for x in v)
    }


def load_evals(paths: list[Path]) -> list[EvalResult]:
    evals = [e for p in paths for e in load_eval(p)]
    fallbacks = [[f"{e.source.stem}/{e.name}", f"{e.source}/{e.name}"] for e in evals]
    for e, name in zip(evals, _unique([e.name for e in evals], fallbacks), strict=True):
        e.name = name
    return evals
