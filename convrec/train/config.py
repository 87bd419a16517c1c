"""The settings of `convrec sft` and `convrec rl`, each default written once (no torch import).

The CLI options take their defaults and choices from here (`defaults`), the training loops read the
same dataclasses, and the pipeline file's `[sft]` / `[rl]` tables name the same fields. The choice
lists of the maths (levels, rewards, shaping weights) and the length-shaping values live here so
that `rank_grpo.py` and the CLI share them without the CLI importing torch.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, fields
from types import SimpleNamespace

from convrec.errors import ConvrecError

LEVELS = ("rank", "token", "sequence")
REWARDS = ("exp_inf", "log")
SHAPING_WEIGHTS = ("item", "token")
ENGINES = ("hf", "vllm")


@dataclass(frozen=True)
class Shaping:
    """List-length shaping of the released code, added to the advantages of the tokens it names."""

    overflow: float = -0.1  # per unit of overflow after the N-th item (see `weight`); an EOS after overflow too
    early_eos: float = -0.1  # EOS with fewer than N items
    exact_eos: float = 0.1  # EOS right after exactly N items, no overflow
    weight: str = "item"  # Rank-GRPO's overflow unit: "item" (a line past the N-th) | "token" (released code)

    def __post_init__(self) -> None:
        if self.weight not in SHAPING_WEIGHTS:
            raise ValueError(f"unknown shaping weight '{self.weight}': choose one of {', '.join(SHAPING_WEIGHTS)}")


def defaults(cls) -> SimpleNamespace:
    """Each field's default (required fields: ``...``, typer's "no default"), for the CLI options."""
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = ...
    return SimpleNamespace(**out)


def check_synced(deepspeed: str | None) -> None:
    """Several processes train one model only through DeepSpeed (which syncs gradients); without it
    every rank would silently train its own copy."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not deepspeed:
        raise ConvrecError(
            "several processes need --deepspeed (ds_configs/zero2.json): without it each would train its own copy"
        )


def _choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConvrecError(f"unknown {flag} '{value}': choose one of {', '.join(choices)}")


def _at_least(cfg, names: tuple[str, ...], low: int = 1) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < low:
            raise ConvrecError(f"--{name.replace('_', '-')} must be at least {low}")


# Defaults for real models (docs/rl.md, "Recipes by model size"); the tiny demo student's recipe lives in
# the demo's own settings (convrec/demo/plan.py). LoRA 2e-4: the Gemma 3 270M runs; full 1e-5: 0.5B-3B models.
LORA_LR, FULL_LR = 2e-4, 1e-5


@dataclass
class SFTConfig:
    data: str
    model: str
    out: str
    sft_set: str | None = None
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 16
    grad_accum: int = 1
    lr: float | None = None  # peak; None: LORA_LR with --lora-r, else FULL_LR (set in __post_init__)
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    keep_last: int = 1  # > 1: also keep RUN/checkpoints/stepN copies of the newest K-1 earlier checkpoints
    max_length: int = 1024
    n_items: int = 20
    eval_every: int = 100
    val_samples: int = 100
    val_constrained: bool = False  # validation (and RUN/best) on catalog-constrained greedy lists
    group_by_length: bool = False  # batches of similar lengths (less padding): `sft._order`
    catalog_loss: bool = False  # list tokens normalised over the catalog-allowed ids (`sft_data.catalog_allowed`)
    seed: int = 0
    gradient_checkpointing: bool = False
    resume: bool = False
    deepspeed: str | None = None  # a DeepSpeed JSON config (ds_configs/zero2.json): ZeRO-2 across processes
    lora_r: int = 0  # > 0: train LoRA adapters of this rank on all linear layers instead of every weight
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    precision: str = "auto"  # compute dtype (precision.resolve); the trained weights are always fp32

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = LORA_LR if self.lora_r else FULL_LR

    def check(self) -> None:
        _at_least(self, ("epochs", "max_steps", "batch_size", "grad_accum", "eval_every", "n_items", "keep_last"))
        check_synced(self.deepspeed)


@dataclass
class RLConfig:
    model: str  # the SFT model (RUN/best): the starting policy and the KL reference
    data: str
    out: str
    level: str = "rank"  # rank (Rank-GRPO) | token (GRPO) | sequence (GSPO)
    reward: str = "exp_inf"  # exp_inf | log (per-rank rewards; GRPO/GSPO always use DCG@N per list)
    group_size: int = 8
    prompts_per_step: int = 4  # per process
    mu: int = 1
    max_steps: int = 100
    lr: float = 1e-6  # the paper's released value (0.5B); the tiny demo student uses 5e-5
    beta: float = 1e-3
    clip_low: float | None = None  # None: the level's default (rank_grpo.DEFAULT_CLIP)
    clip_high: float | None = None
    max_grad_norm: float = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.99)
    micro_batch_size: int = 16
    temperature: float = 1.0  # sampling and scoring: old, new and reference log-probs are all at this T
    top_p: float = 1.0  # not corrected for in the log-probs (as TRL)
    max_new_tokens: int | None = None  # default: N × the catalog's long lines under the tokenizer (list_token_budget)
    max_prompt_tokens: int = 768
    n_items: int = 20
    overflow_penalty: float = Shaping.overflow
    early_eos_penalty: float = Shaping.early_eos
    exact_eos_bonus: float = Shaping.exact_eos
    shaping_weight: str = Shaping.weight
    duplicate_penalty: float = 0.0  # λ_dup: a rank that repeats an earlier item earns −λ_dup (0: the paper's 0)
    engine: str = "hf"
    # sample only catalog lines (trie-masked, no repeats, seen items excluded); old, new and reference
    # log-probs are those of the masked policy that drew them (what `generate --constrained` serves)
    constrained_rollouts: bool = False
    vllm_gpu_memory: float = 0.3  # the share of each GPU the vllm engine takes (its weights + KV cache)
    vllm_max_model_len: int | None = None  # the vllm engine's longest sequence; default: prompt + token budget
    vllm_sleep: bool = True  # the vllm engine frees its GPU memory while the policy updates
    gradient_checkpointing: bool = False  # recompute activations in the backward (rows scored as full sequences)
    eval_every: int = 25
    val_samples: int = 100
    val_constrained: bool = False  # validation (and RUN/best) on catalog-constrained greedy lists
    seed: int = 0
    resume: bool = False
    deepspeed: str | None = None
    keep_last: int = 1
    precision: str = "auto"  # compute dtype (precision.resolve); the trained weights are always fp32

    def shaping(self) -> Shaping:
        return Shaping(self.overflow_penalty, self.early_eos_penalty, self.exact_eos_bonus, self.shaping_weight)

    def check(self) -> None:
        _choice("level", self.level, LEVELS)
        _choice("reward", self.reward, REWARDS)
        _choice("engine", self.engine, ENGINES)
        _choice("shaping weight", self.shaping_weight, SHAPING_WEIGHTS)
        names = ("group_size", "prompts_per_step", "mu", "max_steps", "micro_batch_size", "eval_every", "n_items")
        _at_least(self, (*names, "max_new_tokens", "max_prompt_tokens", "vllm_max_model_len"))
        if not 0 < self.vllm_gpu_memory <= 1:
            raise ConvrecError("--vllm-gpu-memory must be in (0, 1]: a share of each GPU's memory")
        if self.temperature <= 0:
            raise ConvrecError("--temperature must be above 0: rollouts sample")
        if not 0 < self.top_p <= 1:
            raise ConvrecError("--top-p must be in (0, 1]")
        if self.duplicate_penalty < 0:
            raise ConvrecError("--duplicate-penalty must be at least 0 (it is subtracted from a repeat's reward)")
        check_synced(self.deepspeed)
        if self.group_size < 2:
            raise ConvrecError("--group-size must be at least 2: advantages compare samples of one prompt")
        if (self.group_size * self.prompts_per_step) % self.micro_batch_size:
            raise ConvrecError(
                f"--micro-batch-size {self.micro_batch_size} must divide the rollouts per step "
                f"({self.prompts_per_step} prompts × {self.group_size} samples)"
            )
