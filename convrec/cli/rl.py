"""`convrec rl`: thin shell over `convrec.train.rl.train`."""

from __future__ import annotations

from pathlib import Path

import typer

from convrec.cli.common import console


def rl_command(
    init: str = typer.Option(..., "--init", help="The SFT model (RUN/best): starting policy and KL reference."),
    data: Path = typer.Option(..., "--data", help="Data folder (catalog, train and val splits)."),
    out: Path = typer.Option(..., "--out", help="Run folder: RUN/last, RUN/best, metrics.jsonl."),
    level: str = typer.Option("rank", "--level", help="rank (Rank-GRPO) | token (GRPO) | sequence (GSPO)."),
    reward: str = typer.Option("exp_inf", "--reward", help="Per-rank reward: exp_inf | log (DCG@k:N)."),
    group_size: int = typer.Option(8, "--group-size", help="Lists sampled per conversation (G)."),
    prompts_per_step: int = typer.Option(4, "--prompts-per-step", help="Conversations per step and process."),
    mu: int = typer.Option(1, "--mu", help="Optimisation passes per rollout batch (2 = off-policy reuse)."),
    max_steps: int = typer.Option(100, "--max-steps"),
    lr: float = typer.Option(1e-5, "--lr", help="Constant learning rate (1e-6 for 0.5B models)."),
    beta: float = typer.Option(1e-3, "--beta", help="KL weight to the SFT reference (0 = no reference model)."),
    clip_low: float | None = typer.Option(None, "--clip-low", help="ε_low; default per level (rank 0.06)."),
    clip_high: float | None = typer.Option(None, "--clip-high", help="ε_high; default per level (rank 0.08)."),
    micro_batch_size: int = typer.Option(16, "--micro-batch-size", help="Rollouts per forward/backward."),
    temperature: float = typer.Option(1.0, "--temperature"),
    top_p: float = typer.Option(1.0, "--top-p"),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Default 14 per item."),
    n_items: int = typer.Option(20, "--n-items", help="List length N."),
    engine: str = typer.Option("hf", "--engine", help="Rollout engine: hf | vllm (GPU)."),
    constrained_rollouts: bool = typer.Option(
        False, "--constrained-rollouts", help="Sample only catalog items (hf engine): no catalog drift in rollouts."
    ),
    eval_every: int = typer.Option(25, "--eval-every", help="Validate and checkpoint every N steps."),
    val_samples: int = typer.Option(100, "--val-samples"),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from RUN/last."),
    keep_last: int = typer.Option(1, "--keep-last"),
    deepspeed: Path | None = typer.Option(None, "--deepspeed", help="DeepSpeed config; launch with torchrun."),
) -> None:
    """Rank-GRPO reinforcement learning from an SFT model (token-level GRPO and GSPO as baselines)."""
    flags = {k: str(v) if isinstance(v, Path) else v for k, v in locals().items()}
    from convrec.train.distributed import is_main
    from convrec.train.rl import RLConfig, train

    result = train(RLConfig(**flags), console=console)
    if is_main():
        console.print(
            f"done: {result['steps']} steps, best val NDCG@20 {result['best_val_ndcg@20']:.4f} · {out}/best, {out}/last"
        )
