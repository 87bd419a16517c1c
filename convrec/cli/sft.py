"""`convrec sft`: thin shell over `convrec.train.sft.train`."""

from __future__ import annotations

from pathlib import Path

import typer

from convrec.cli.common import console


def sft_command(
    data: Path = typer.Option(..., "--data", help="Data folder (catalog, train and val splits)."),
    model: str = typer.Option(..., "--model", help="Hub id or local model folder (e.g. from `convrec model init`)."),
    out: Path = typer.Option(..., "--out", help="Run folder: RUN/last, RUN/best, metrics.jsonl."),
    sft_set: Path | None = typer.Option(None, "--sft-set", help="Stage 1 SFT set; default: train ground truth."),
    epochs: int = typer.Option(3, "--epochs"),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many optimiser steps."),
    batch_size: int = typer.Option(16, "--batch-size", help="Micro-batch size."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Gradient accumulation steps."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (1e-3 suits the tiny model; ~1e-5 real ones)."),
    warmup_ratio: float = typer.Option(0.05, "--warmup-ratio"),
    weight_decay: float = typer.Option(0.0, "--weight-decay", help="AdamW weight decay."),
    max_length: int = typer.Option(1024, "--max-length", help="Context length; prompts are cut from the left."),
    eval_every: int = typer.Option(100, "--eval-every", help="Validate and checkpoint every N steps."),
    val_samples: int = typer.Option(100, "--val-samples", help="Validation samples for loss and generated metrics."),
    seed: int = typer.Option(0, "--seed"),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing"),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from RUN/last."),
    keep_last: int = typer.Option(1, "--keep-last", help="Checkpoints to keep: RUN/last plus K-1 in RUN/checkpoints."),
    lora_r: int = typer.Option(0, "--lora-r", help="LoRA rank (0 = full fine-tuning); needs peft."),
    lora_alpha: int = typer.Option(16, "--lora-alpha"),
    lora_dropout: float = typer.Option(0.05, "--lora-dropout"),
    deepspeed: Path | None = typer.Option(
        None, "--deepspeed", help="DeepSpeed config (ds_configs/zero2.json); launch with torchrun or deepspeed."
    ),
) -> None:
    """Supervised fine-tuning (behaviour cloning) on catalog-grounded `Title (Year)` lists."""
    # every flag is a field of SFTConfig: paths travel as strings (the config is saved as JSON)
    flags = {k: str(v) if isinstance(v, Path) else v for k, v in locals().items()}
    from convrec.train.sft import SFTConfig, train

    cfg = SFTConfig(**flags)
    result = train(cfg, console=console)
    from convrec.train.distributed import is_main

    if is_main():
        console.print(
            f"done: {result['steps']} steps, final loss {result['final_loss']:.4f}, best val NDCG@20 "
            f"{result['best_val_ndcg@20']:.4f}; prompts truncated: {result['truncated_prompts']} · {out}/best, "
            f"{out}/last"
        )


def generate_command(
    model: str = typer.Option(..., "--model", help="Hub id or model folder (e.g. RUN/best)."),
    data: Path = typer.Option(..., "--data", help="Data folder."),
    split: str = typer.Option("test", "--split"),
    out: Path = typer.Option(..., "--out", help="Predictions Parquet to write."),
    n_items: int = typer.Option(20, "--n-items"),
    batch_size: int = typer.Option(16, "--batch-size"),
    max_new_tokens: int = typer.Option(320, "--max-new-tokens"),
    sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0, "--temperature"),
    top_p: float = typer.Option(1.0, "--top-p"),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N samples."),
    constrained: bool = typer.Option(
        False, "--constrained", help="Catalog-constrained decoding: every line a catalog item, no repeats."
    ),
    exclude_seen: bool = typer.Option(
        True, "--exclude-seen/--keep-seen", help="With --constrained: never list a title the conversation names."
    ),
) -> None:
    """Generate ranked lists for a split (batched, KV cache), writing the predictions schema."""
    from rich.progress import Progress

    from convrec import artifacts
    from convrec.data import load_split, split_path
    from convrec.generate import GenerationConfig, generate_predictions
    from convrec.models.load import load_model, load_tokenizer

    samples = load_split(data, split)
    samples = samples.head(limit) if limit else samples
    tok, mdl = load_tokenizer(model), load_model(model)
    cfg = GenerationConfig(
        n_items=n_items,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        do_sample=sample,
        temperature=temperature,
        top_p=top_p,
        constrained=constrained,
        exclude_seen=exclude_seen,
    )
    catalog = None
    if constrained:
        from convrec.data import open_catalog

        catalog = open_catalog(data)
    with Progress(console=console) as progress:
        task = progress.add_task("generating", total=samples["conversation_id"].n_unique())
        preds = generate_predictions(mdl, tok, samples, cfg, lambda k: progress.advance(task, k), catalog)
    artifacts.write(
        preds,
        out,
        artifacts.PREDICTIONS,
        stage="generate",
        params={"model": model, "split": split, **cfg.__dict__},
        inputs=[split_path(data, split)],
    )
    console.print(f"wrote {preds.height:,} predictions to {out}")
