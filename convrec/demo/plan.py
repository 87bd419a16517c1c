"""`convrec demo`: the whole ConvRec-R1 pipeline as a plan of ordinary `convrec` commands.

synthetic world → baselines → teacher on train (remap → reflect → adjust = the SFT set) → teacher
on test (remapped, as a zero-shot row) → model init → sft → rl (GRPO and Rank-GRPO) → generate →
eval → report. Each step runs the real command in this process with the flags printed before it,
and writes under `--out`, so any single stage can be rerun by hand from the same files.

Flags come from three places, weakest first: the demo's defaults for the chosen size, the
pipeline config file (`[sft]`, `[rl]`, ... as for `convrec --config`), and the wiring the demo
owns (every `--out`/`--in`/`--data`/`--split`/`--init`/`--level`, which must point at the demo's
own files). `OUT/demo.json` records each finished step with its exact command line: a rerun skips
steps whose command and outputs are unchanged, reruns everything after the first one that
changed, and continues a killed sft or rl run with `--resume`.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convrec import artifacts
from convrec.cli.config import option_names  # a leaf module: the plan's flags, spelt as the config file spells them
from convrec.errors import ConvrecError

STATE_FILE = "demo.json"

# Per size: the defaults a config file may override. `small` is the README's first command
# (≤ 10 minutes on 2 CPU cores); `medium` is a larger world and a larger student.
# The small demo's RL validates once, at its last step: one number to change, not two.
SMALL_RL_STEPS = 240

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "small": {
        "data synth": {"size": "small"},
        # one token per catalog line, and the prompt's constant instruction as one token (~35 % shorter samples)
        "model init": {"size": "tiny", "item_tokens": True, "instruction_token": True},
        # validation, RL rollouts and the final lists all use the catalog-constrained lists served.
        # 800 steps at 1e-3 (cosine); the demo goes on from RUN/last, the schedule's end. Weight decay 0.1
        # and length-grouped batches: +0.016 NDCG@20 on the full validation split over neither (mean of two
        # seeds) and ~195 s instead of ~250 (README, Stage 2: "The SFT recipe")
        "sft": {
            "max_steps": 800,
            "lr": 1e-3,
            "weight_decay": 0.1,
            "group_by_length": True,
            "eval_every": 400,
            "val_samples": 200,
            "batch_size": 16,
            "val_constrained": True,
        },
        # item-token rollouts are short and a group's prompt is scored once; the two runs go side by side.
        # 8 × 2 prompts over 8 × 4 and 16 × 2; from the SFT recipe above, 240 steps at KL weight 0.01 over
        # KL 1e-3 (160, 240, 320 steps), KL 0.03, lr 7e-5 or 1e-4, mu 2, T 0.7: highest on the full validation
        # split averaged over both levels and two seeds (README, Stage 2: "RL from the SFT recipe")
        "rl": {
            "max_steps": SMALL_RL_STEPS,
            "prompts_per_step": 2,
            "lr": 5e-5,
            "beta": 0.01,
            "eval_every": SMALL_RL_STEPS,
            "val_samples": 50,
            "group_size": 8,
            "constrained_rollouts": True,
            "val_constrained": True,
        },
    },
    "medium": {
        "data synth": {"size": "medium"},
        "model init": {"size": "small"},  # item tokens not yet measured on the medium world
        "sft": {"max_steps": 2000, "lr": 1e-3, "eval_every": 250, "val_samples": 200, "batch_size": 16},
        "rl": {"max_steps": 100, "lr": 2e-5, "eval_every": 25, "val_samples": 200, "group_size": 8},
    },
}

# The final table: prediction file stem → row label, in the order the method builds them.
ROWS = {
    "popularity": "popularity",
    "cooc": "co-occurrence",
    "teacher_raw": "teacher (zero-shot, raw)",
    "teacher_remapped": "teacher (zero-shot, remapped)",
    "sft": "SFT",
    "sft_grpo": "SFT + GRPO",
    "sft_rank_grpo": "SFT + Rank-GRPO",
}
TRAINED = ("sft", "sft_grpo", "sft_rank_grpo")
RL_ROWS = ("sft_grpo", "sft_rank_grpo")


@dataclass
class Step:
    key: str  # name in the stage table and in OUT/demo.json
    title: str
    command: list[str]  # e.g. ["sft"], ["data", "synth"]
    fixed: dict[str, Any]  # the demo's wiring: always on the command line
    tunable: dict[str, Any] = field(default_factory=dict)  # defaults a config file may override
    args: list[str] = field(default_factory=list)  # positional arguments
    outputs: list[Path] = field(default_factory=list)  # all exist once the step succeeded
    run_dir: Path | None = None  # sft / rl: continue with --resume from RUN/last
    together: str | None = None  # adjacent steps with the same tag may run side by side (the two RL runs)


@dataclass
class Options:
    out: Path
    size: str = "small"
    seed: int = 0
    data: Path | None = None  # a user's data folder instead of the synthetic world
    config: Path | None = None
    nproc: int = 1  # processes for sft and rl (torchrun); 1 runs them in this process
    settings: dict = field(default_factory=dict)  # config default_map: command path → {param: value}


def configured(opts: Options, command: list[str]) -> dict[str, Any]:
    """What the config file sets for one command (param name → value)."""
    node: Any = opts.settings
    for part in command:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


def plan(opts: Options) -> list[Step]:
    out, sizes = opts.out, SIZES[opts.size]
    data = opts.data or out / "data"
    pred, s1, runs = out / "pred", out / "stage1", out / "runs"
    synthetic = opts.data is None or (Path(opts.data) / "latent.parquet").exists()
    teacher = "synthetic" if synthetic else "cooc"  # an offline teacher either way; a config names a real one
    sft_model = configured(opts, ["sft"]).get("model")
    steps: list[Step] = []
    if opts.data is None:
        steps.append(
            Step(
                "synth",
                "synthetic world (catalog, train/val/test conversations)",
                ["data", "synth"],
                {"out": data},
                {"seed": opts.seed, **sizes["data synth"]},
                outputs=[data / "catalog.parquet", data / "test.parquet"],
            )
        )
    for kind in ("popularity", "cooc"):
        steps.append(
            Step(
                kind,
                f"{kind} baseline on test",
                ["baseline", kind],
                {"data": data, "split": "test", "out": pred / f"{kind}.parquet"},
                outputs=[pred / f"{kind}.parquet"],
            )
        )
    stage1 = {"teacher": teacher, "seed": opts.seed, "tune": True}  # β, λ chosen on val: never below the raw lists
    steps += [
        Step(
            "remap",
            "teacher lists on train, projected onto the catalog",
            ["remap"],
            {"data": data, "split": "train", "out": s1 / "remap_train.parquet"},
            stage1,
            outputs=[s1 / "remap_train.parquet"],
        ),
        Step(
            "reflect",
            "judge re-scores the candidates",
            ["reflect"],
            {"in": s1 / "remap_train.parquet", "data": data, "out": s1 / "reflect_train.parquet"},
            {"judge": "embed", "gamma": 0.05},
            outputs=[s1 / "reflect_train.parquet"],
        ),
        Step(
            "adjust",
            "popularity-bias correction → the SFT set",
            ["adjust"],
            {"in": s1 / "reflect_train.parquet", "data": data, "out": s1 / "sft_set.parquet"},
            {"ground_truth_first": True},
            outputs=[s1 / "sft_set.parquet"],
        ),
        Step(
            "teacher-test",
            "teacher zero-shot on test, raw and remapped",
            ["remap"],
            {
                "data": data,
                "split": "test",
                "out": pred / "teacher_remapped.parquet",
                "raw_out": pred / "teacher_raw.parquet",
            },
            stage1,
            outputs=[pred / "teacher_remapped.parquet", pred / "teacher_raw.parquet"],
        ),
    ]
    if sft_model is None:
        steps.append(
            Step(
                "model-init",
                "student model built locally (tokenizer + random Llama)",
                ["model", "init"],
                {"data": data, "out": out / "model"},
                {"seed": opts.seed, **sizes["model init"]},
                outputs=[out / "model" / "config.json"],
            )
        )
    steps.append(
        Step(
            "sft",
            "behaviour cloning on the SFT set",
            ["sft"],
            {"data": data, "out": runs / "sft", "sft_set": s1 / "sft_set.parquet"},
            {"model": out / "model", "seed": opts.seed, **sizes["sft"]},
            outputs=[runs / "sft" / "last" / "config.json"],
            run_dir=runs / "sft",
        )
    )
    for level, name in (("token", "grpo"), ("rank", "rank_grpo")):
        steps.append(
            Step(
                name.replace("_", "-"),
                f"{'GRPO (token level)' if level == 'token' else 'Rank-GRPO'} from the SFT model",
                ["rl"],
                {"model": runs / "sft" / "last", "data": data, "out": runs / name, "level": level},
                {"seed": opts.seed, **sizes["rl"]},
                outputs=[runs / name / "last" / "config.json"],
                run_dir=runs / name,
                together="rl",
            )
        )
    # every row is its run's RUN/last: an RL run's RUN/best may be its step-0 validation, i.e. the SFT model
    for model, stem in (("sft/last", "sft"), ("grpo/last", "sft_grpo"), ("rank_grpo/last", "sft_rank_grpo")):
        steps.append(
            Step(
                f"generate-{stem.replace('_', '-')}",
                f"greedy catalog-constrained lists on test from runs/{model}",
                ["generate"],
                {"model": runs / model, "data": data, "split": "test", "out": pred / f"{stem}.parquet"},
                {"constrained": True},  # final lists: catalog items only, no repeats (`[generate]` may turn it off)
                outputs=[pred / f"{stem}.parquet"],
            )
        )
    steps += [
        Step(
            "eval",
            "Recall/NDCG@k on test, 95 % intervals, paired differences against co-occurrence",
            ["eval"],
            {
                "data": data,
                "split": "test",
                "k": "5,10,20",
                "json": out / "metrics.json",
                "baseline": pred / "cooc.parquet",
            },
            args=[str(pred / f"{stem}.parquet") for stem in ROWS],
            outputs=[out / "metrics.json"],
        ),
        Step(
            "report",
            "training curves and metric plots",
            ["report"],
            {"out": out / "report", "metrics": [out / "metrics.json"]},
            args=[str(runs / r) for r in ("sft", "grpo", "rank_grpo")],
            outputs=[out / "report" / "index.md"],
        ),
    ]
    return steps


def argv(step: Step, opts: Options, root) -> list[str]:
    """The step's command line: fixed wiring always, defaults only where the config is silent."""
    cmd = root
    for part in step.command:
        cmd = cmd.commands[part]
    params, names = {p.name: p for p in cmd.params}, option_names(cmd)
    from_config = configured(opts, step.command)
    flags = {**{k: v for k, v in step.tunable.items() if names.get(k) not in from_config}, **step.fixed}
    words = ["--config", str(opts.config)] if opts.config else []
    words += [*step.command, *step.args]
    for name, value in flags.items():
        p = params.get(names.get(name, ""))
        if p is None:  # a demo bug, caught by the tests
            raise ConvrecError(f"demo step '{step.key}': '{' '.join(step.command)}' has no option '{name}'")
        if isinstance(value, bool):  # --flag, or its --no-flag form when the option has one
            words += [p.opts[0]] if value else p.secondary_opts[:1]
            continue
        for v in value if isinstance(value, list) else [value]:
            words += [p.opts[0], str(v)]
    return words


def _load_state(out: Path) -> dict:
    path = out / STATE_FILE
    if not path.exists():
        return {"steps": {}}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError:
        state = None
    if not isinstance(state, dict) or not isinstance(state.get("steps"), dict):
        raise ConvrecError(f"{path}: not a demo state file (delete it, or use another --out)")
    return state


def _batches(steps: list[Step], side_by_side: bool) -> list[list[Step]]:
    """The plan cut into runs of steps: adjacent steps sharing a `together` tag form one batch when
    ``side_by_side``, every other step is a batch of its own."""
    out: list[list[Step]] = []
    for step in steps:
        if side_by_side and out and step.together is not None and out[-1][-1].together == step.together:
            out[-1].append(step)
        else:
            out.append([step])
    return out


def run(opts: Options, console, root, restart: bool = False) -> dict:
    """Run (or continue) the plan with ``root``, the `convrec` click command tree (each step is
    ``root.main(words)``, as on the command line; the two RL runs side by side in child processes
    when the machine has 2+ cores); returns the state: per-step seconds, the steps run now, the wall time."""
    from rich.markup import escape

    from convrec.demo import side_by_side
    from convrec.train import checkpoint, distributed

    out = opts.out
    if out.exists() and not out.is_dir():
        raise ConvrecError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    state = {"steps": {}} if restart else _load_state(out)
    steps = plan(opts)
    state["ran"] = []
    changed = False  # once a step reruns, every later step reruns too
    started = time.perf_counter()
    index = {step.key: i for i, step in enumerate(steps, 1)}

    def prepare(step: Step) -> list[str] | None:
        """The step's command line, or None when it is up to date; prints its header either way."""
        words = argv(step, opts, root)
        done = state["steps"].get(step.key, {})
        # the command line names the config file, not its contents: the step's settings count too
        settings = json.loads(json.dumps(configured(opts, step.command), default=str))
        same = done.get("argv") == words and done.get("settings", {}) == settings
        up_to_date = not changed and same and done.get("ok") and all(p.exists() for p in step.outputs)
        console.rule(f"[bold][{index[step.key]}/{len(steps)}] {step.key}[/]: {escape(step.title)}")
        if up_to_date:
            console.print(f"[dim]up to date ({done['seconds']:.1f} s when it ran); skipped[/]")
            return None
        resume = not changed and step.run_dir is not None and same and checkpoint.has_state(step.run_dir / "last")
        state["steps"][step.key] = {"argv": words, "settings": settings, "ok": False, "seconds": 0.0}
        if resume:  # a killed sft/rl run with the same inputs and flags continues exactly
            words = [*words, "--resume"]
        console.print(f"[dim]$ convrec {escape(' '.join(words))}[/]", soft_wrap=True)
        artifacts.write_json(state, out / STATE_FILE)
        return words

    def finish(step: Step, code: int | None, seconds: float, log: Path | None = None) -> None:
        where = f" (log {log}: {side_by_side.tail(log)})" if log is not None else ""
        if code not in (None, 0):
            raise ConvrecError(f"demo step '{step.key}' exited with code {code}{where}")
        missing = [str(p) for p in step.outputs if not p.exists()]
        if missing:
            raise ConvrecError(f"demo step '{step.key}' finished without writing {', '.join(missing)}{where}")
        state["steps"][step.key].update(ok=True, seconds=seconds)
        state["ran"].append(step.key)
        artifacts.write_json(state, out / STATE_FILE)

    parallel = opts.nproc == 1 and side_by_side.cores() >= 2
    for batch in _batches(steps, parallel):
        # a batch's steps are independent of each other: each is judged (and resumed) on what came before
        todo = [(step, words) for step in batch if (words := prepare(step)) is not None]
        changed = changed or bool(todo)
        if len(todo) > 1:  # child processes, each on its share of the cores, each logging to a file
            logs = [out / "logs" / f"{step.key}.log" for step, _ in todo]
            console.print(
                f"[dim]{' and '.join(s.key for s, _ in todo)} side by side; logs: {', '.join(map(str, logs))}[/]"
            )
            done = side_by_side.run([words for _, words in todo], logs)
            for (step, _), f in sorted(zip(todo, done, strict=True), key=lambda x: x[1].code != 0):
                finish(step, f.code, f.seconds, f.log)  # the runs that succeeded are recorded first
                console.print(f"{step.key}: {side_by_side.tail(f.log, 1)} ({f.seconds:.0f} s)", highlight=False)
            continue
        for step, words in todo:
            t0 = time.perf_counter()
            try:
                if step.run_dir is not None and opts.nproc > 1:  # sft / rl in N processes (DeepSpeed from the config)
                    code = subprocess.run(distributed.torchrun_command(opts.nproc, *words)).returncode
                else:
                    code = root.main(args=words, standalone_mode=False, prog_name="convrec")
            except ConvrecError as e:
                raise ConvrecError(
                    f"demo step '{step.key}' failed: {e} (fix it, then rerun the same demo command to continue here)"
                ) from None
            finish(step, code, time.perf_counter() - t0)
    state["wall_seconds_this_run"] = time.perf_counter() - started
    artifacts.write_json(state, out / STATE_FILE)
    return state


def final_rows(metrics_json: Path, data: Path | None = None) -> list[tuple[str, dict]]:
    """(label, summary) per prediction file of the eval JSON, in the table's order. With ``data``
    (the folder the predictions were scored on), each RL row also gets `paired_vs_sft`: its paired
    NDCG/Recall@20 difference against the SFT row on the same test samples (the eval step's
    `--baseline` is co-occurrence)."""
    results = json.loads(Path(metrics_json).read_text())["results"]
    by_path = {Path(p).stem: Path(p) for p in results}
    by_stem = {Path(p).stem: s for p, s in results.items()}
    if data is not None and "sft" in by_path and all(r in by_path for r in RL_ROWS):
        for stem, paired in paired_against(data, [by_path[r] for r in RL_ROWS], by_path["sft"]).items():
            by_stem[stem]["paired_vs_sft"] = paired
    return [(label, by_stem[stem]) for stem, label in ROWS.items() if stem in by_stem]


def paired_against(data: Path, preds: list[Path], base: Path, split: str = "test") -> dict[str, dict]:
    """stem → `convrec eval --baseline`'s paired differences at k = 20, computed by the same code."""
    from convrec.data import load_split, open_catalog
    from convrec.evaluation.evaluate import EvalConfig, compare, evaluate

    catalog, samples, cfg = open_catalog(data), load_split(data, split), EvalConfig(ks=(20,))

    def rows(path: Path):
        return evaluate(artifacts.read(path, artifacts.PREDICTIONS), samples, catalog, cfg)[1]

    base_rows = rows(base)
    return {p.stem: compare(rows(p), base_rows, cfg) for p in preds}
