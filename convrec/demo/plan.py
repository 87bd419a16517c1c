"""`convrec demo`: the whole ConvRec-R1 pipeline as a plan of ordinary `convrec` commands.

synthetic world → baselines → teacher on train (remap → reflect → adjust = the SFT set) → teacher
on test (remapped, as a zero-shot row) → model init → sft → rl (GRPO and Rank-GRPO) → generate →
eval → report. Each step runs the real command in this process with the flags printed before it,
and writes under `--out`, so any single stage can be rerun by hand from the same files. This
module is the plan; `runner` runs it (state, resume, side-by-side RL); `results` reads the table.

Flags come from three places, weakest first: the demo's defaults for the chosen size, the
pipeline config file (`[sft]`, `[rl]`, ... as for `convrec --config`), and the wiring the demo
owns (every `--out`/`--in`/`--data`/`--split`/`--init`/`--level`, which must point at the demo's
own files). `OUT/demo.json` records each finished step with its exact command line: a rerun skips
steps whose command and outputs are unchanged, reruns everything after the first one that
changed, and continues a killed sft or rl run with `--resume`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convrec.cli.config import option_names  # a leaf module: the plan's flags, spelt as the config file spells them
from convrec.errors import ConvrecError

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
            # the samples SFT validates on, so RL's step 0 (the SFT model) and SFT's last point agree;
            # on 50 the curves were not comparable. +5 to 7 s per validation on a busy 2-core machine (2 per run)
            "val_samples": 200,
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
    """The demo's steps in order: world, baselines, Stage 1, student, training, final lists, eval, report."""
    paths = _Paths(opts)
    return [
        *_world(opts, paths),
        *_baselines(paths),
        *_stage1(opts, paths),
        *_student(opts, paths),
        *_training(opts, paths),
        *_final_lists(paths),
        *_scoring(paths),
    ]


class _Paths:
    """Where the demo writes: OUT/data (unless --data), OUT/stage1, OUT/pred, OUT/runs, OUT/model."""

    def __init__(self, opts: Options):
        self.out = opts.out
        self.data = Path(opts.data) if opts.data else opts.out / "data"
        self.s1, self.pred, self.runs = opts.out / "stage1", opts.out / "pred", opts.out / "runs"


def _world(opts: Options, p: _Paths) -> list[Step]:
    if opts.data is not None:
        return []
    return [
        Step(
            "synth",
            "synthetic world (catalog, train/val/test conversations)",
            ["data", "synth"],
            {"out": p.data},
            {"seed": opts.seed, **SIZES[opts.size]["data synth"]},
            outputs=[p.data / "catalog.parquet", p.data / "test.parquet"],
        )
    ]


def _baselines(p: _Paths) -> list[Step]:
    return [
        Step(
            kind,
            f"{kind} baseline on test",
            ["baseline", kind],
            {"data": p.data, "split": "test", "out": p.pred / f"{kind}.parquet"},
            outputs=[p.pred / f"{kind}.parquet"],
        )
        for kind in ("popularity", "cooc")
    ]


def _stage1(opts: Options, p: _Paths) -> list[Step]:
    """Teacher on train (remap → reflect → adjust = the SFT set), and on test as a zero-shot row."""
    synthetic = opts.data is None or (Path(opts.data) / "latent.parquet").exists()
    teacher = "synthetic" if synthetic else "cooc"  # an offline teacher either way; a config names a real one
    stage1 = {"teacher": teacher, "seed": opts.seed, "tune": True}  # β, λ chosen on val: never below the raw lists
    data, s1, pred = p.data, p.s1, p.pred
    return [
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


def _student(opts: Options, p: _Paths) -> list[Step]:
    """A student built locally, unless the config's `[sft] model` names one."""
    if configured(opts, ["sft"]).get("model") is not None:
        return []
    return [
        Step(
            "model-init",
            "student model built locally (tokenizer + random Llama)",
            ["model", "init"],
            {"data": p.data, "out": p.out / "model"},
            {"seed": opts.seed, **SIZES[opts.size]["model init"]},
            outputs=[p.out / "model" / "config.json"],
        )
    ]


def _training(opts: Options, p: _Paths) -> list[Step]:
    """SFT on the Stage 1 set, then GRPO and Rank-GRPO from its last checkpoint (side by side)."""
    runs, sizes = p.runs, SIZES[opts.size]
    steps = [
        Step(
            "sft",
            "behaviour cloning on the SFT set",
            ["sft"],
            {"data": p.data, "out": runs / "sft", "sft_set": p.s1 / "sft_set.parquet"},
            {"model": p.out / "model", "seed": opts.seed, **sizes["sft"]},
            outputs=[runs / "sft" / "last" / "config.json"],
            run_dir=runs / "sft",
        )
    ]
    for level, name in (("token", "grpo"), ("rank", "rank_grpo")):
        steps.append(
            Step(
                name.replace("_", "-"),
                f"{'GRPO (token level)' if level == 'token' else 'Rank-GRPO'} from the SFT model",
                ["rl"],
                {"model": runs / "sft" / "last", "data": p.data, "out": runs / name, "level": level},
                {"seed": opts.seed, **sizes["rl"]},
                outputs=[runs / name / "last" / "config.json"],
                run_dir=runs / name,
                together="rl",
            )
        )
    return steps


def _final_lists(p: _Paths) -> list[Step]:
    # every row is its run's RUN/last: an RL run's RUN/best may be its step-0 validation, i.e. the SFT model
    return [
        Step(
            f"generate-{stem.replace('_', '-')}",
            f"greedy catalog-constrained lists on test from runs/{model}",
            ["generate"],
            {"model": p.runs / model, "data": p.data, "split": "test", "out": p.pred / f"{stem}.parquet"},
            {"constrained": True},  # final lists: catalog items only, no repeats (`[generate]` may turn it off)
            outputs=[p.pred / f"{stem}.parquet"],
        )
        for model, stem in (("sft/last", "sft"), ("grpo/last", "sft_grpo"), ("rank_grpo/last", "sft_rank_grpo"))
    ]


def _scoring(p: _Paths) -> list[Step]:
    out = p.out
    return [
        Step(
            "eval",
            "Recall/NDCG@k on test, 95 % intervals, paired differences against co-occurrence",
            ["eval"],
            {
                "data": p.data,
                "split": "test",
                "k": "5,10,20",
                "json": out / "metrics.json",
                "baseline": p.pred / "cooc.parquet",
            },
            args=[str(p.pred / f"{stem}.parquet") for stem in ROWS],
            outputs=[out / "metrics.json"],
        ),
        Step(
            "report",
            "training curves and metric plots",
            ["report"],
            {"out": out / "report", "metrics": [out / "metrics.json"]},
            args=[str(p.runs / r) for r in ("sft", "grpo", "rank_grpo")],
            outputs=[out / "report" / "index.md"],
        ),
    ]


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
