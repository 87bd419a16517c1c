"""`convrec rl`: thin shell over `convrec.train.rl.train`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from convrec.cli.choices import ComputePrecision
from convrec.cli.common import console, renamed
from convrec.train.config import ENGINES, LEVELS, REWARDS, SHAPING_WEIGHTS, RLConfig, defaults

D = defaults(RLConfig)


def rl_command(
    model: str = typer.Option(..., "--model", help="The SFT model (RUN/best): starting policy and KL reference."),
    data: Path = typer.Option(..., "--data", help="Data folder (catalog, train and val splits)."),
    out: Path = typer.Option(..., "--out", help="Run folder: RUN/last, RUN/best, metrics.jsonl."),
    level: Literal[LEVELS] = typer.Option(D.level, "--level", help="rank: Rank-GRPO; token: GRPO; sequence: GSPO."),
    reward: Literal[REWARDS] = typer.Option(D.reward, "--reward", help="Per-rank reward (DCG@k:N)."),
    group_size: int = typer.Option(D.group_size, "--group-size", help="Lists sampled per conversation (G)."),
    prompts_per_step: int = typer.Option(D.prompts_per_step, "--prompts-per-step", help="Conversations per step."),
    mu: int = typer.Option(D.mu, "--mu", help="Optimisation passes per rollout batch (2 = off-policy reuse)."),
    max_steps: int = typer.Option(D.max_steps, "--max-steps", help="Optimisation steps (rollout batches)."),
    lr: float = typer.Option(
        D.lr, "--lr", help="Constant learning rate (the paper's 1e-6; the tiny demo student: 5e-5)."
    ),
    beta: float = typer.Option(D.beta, "--beta", help="KL weight to the SFT reference (0 = no reference model)."),
    clip_low: float | None = typer.Option(D.clip_low, "--clip-low", help="ε_low; default per level (rank 0.06)."),
    clip_high: float | None = typer.Option(D.clip_high, "--clip-high", help="ε_high; default per level (rank 0.08)."),
    max_grad_norm: float = typer.Option(D.max_grad_norm, "--max-grad-norm", help="Gradient clipping norm."),
    adam_betas: tuple[float, float] = typer.Option(D.adam_betas, "--adam-betas", help="AdamW's β1 β2."),
    micro_batch_size: int = typer.Option(D.micro_batch_size, "--micro-batch-size", help="Rollouts per backward."),
    temperature: float = typer.Option(
        D.temperature, "--temperature", help="Sampling temperature; old, new and reference log-probs use it too."
    ),
    top_p: float = typer.Option(
        D.top_p, "--top-p", help="Nucleus sampling; not corrected for in the log-probs (as TRL)."
    ),
    max_new_tokens: int | None = typer.Option(
        D.max_new_tokens, "--max-new-tokens", help="Default: N × the catalog's long lines under the tokenizer."
    ),
    max_prompt_tokens: int = typer.Option(
        D.max_prompt_tokens, "--max-prompt-tokens", help="Longer prompts lose old turns."
    ),
    n_items: int = typer.Option(D.n_items, "--n-items", help="List length N."),
    overflow_penalty: float = typer.Option(D.overflow_penalty, "--overflow-penalty", help="Shaping per overflow unit."),
    early_eos_penalty: float = typer.Option(D.early_eos_penalty, "--early-eos-penalty", help="EOS before item N."),
    exact_eos_bonus: float = typer.Option(D.exact_eos_bonus, "--exact-eos-bonus", help="EOS right after item N."),
    shaping_weight: Literal[SHAPING_WEIGHTS] = typer.Option(
        D.shaping_weight,
        "--shaping-weight",
        help="Rank-GRPO's overflow unit: a line past N (item) or every token (token, the released code).",
    ),
    duplicate_penalty: float = typer.Option(
        D.duplicate_penalty, "--duplicate-penalty", help="Reward −λ at a rank that repeats an item (0: the paper's 0)."
    ),
    engine: Literal[ENGINES] = typer.Option(D.engine, "--engine", help="Rollout engine (vllm: GPU, docs/gpu.md)."),
    constrained_rollouts: bool = typer.Option(
        D.constrained_rollouts,
        "--constrained-rollouts",
        help="Sample only catalog items, none twice; the loss scores them under that masked policy.",
    ),
    vllm_gpu_memory: float = typer.Option(
        D.vllm_gpu_memory, "--vllm-gpu-memory", help="Share of each GPU the vllm engine takes (weights + KV cache)."
    ),
    vllm_max_model_len: int | None = typer.Option(
        D.vllm_max_model_len,
        "--vllm-max-model-len",
        help="The vllm engine's longest sequence; default: --max-prompt-tokens + the token budget.",
    ),
    vllm_sleep: bool = typer.Option(
        D.vllm_sleep, "--vllm-sleep/--no-vllm-sleep", help="Free the vllm engine's GPU memory during each update."
    ),
    gradient_checkpointing: bool = typer.Option(
        D.gradient_checkpointing,
        "--gradient-checkpointing",
        help="Recompute activations in backward: less memory (each rollout scored as a full sequence).",
    ),
    eval_every: int = typer.Option(D.eval_every, "--eval-every", help="Validate and checkpoint every N steps."),
    val_samples: int = typer.Option(D.val_samples, "--val-samples", help="Validation samples (the first N of val)."),
    val_constrained: bool = typer.Option(
        D.val_constrained, "--val-constrained", help="Validate (and pick RUN/best) on catalog-constrained lists."
    ),
    seed: int = typer.Option(D.seed, "--seed", help="Seed of the prompt order and the rollouts."),
    resume: bool = typer.Option(D.resume, "--resume", help="Continue exactly from RUN/last."),
    keep_last: int = typer.Option(D.keep_last, "--keep-last", help="Keep copies of the last K-1 saves too."),
    deepspeed: Path | None = typer.Option(D.deepspeed, "--deepspeed", help="DeepSpeed config; launch with torchrun."),
    precision: ComputePrecision = typer.Option(
        D.precision, "--precision", help="Compute precision (autocast); trained weights stay fp32 (see sft)."
    ),
    _init: str | None = renamed("--init", "--model"),
) -> None:
    """Rank-GRPO reinforcement learning from an SFT model (token-level GRPO and GSPO as baselines)."""
    flags = {k: str(v) if isinstance(v, Path) else v for k, v in locals().items() if not k.startswith("_")}
    from convrec.train.distributed import is_main
    from convrec.train.rl import train

    result = train(RLConfig(**flags), console=console)
    if is_main():
        console.print(
            f"done: {result['steps']} steps, best val NDCG@20 {result['best_val_ndcg@20']:.4f} · {out}/best, {out}/last"
        )
