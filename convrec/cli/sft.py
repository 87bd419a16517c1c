"""`convrec sft`: thin shell over `convrec.train.sft.train`."""

from __future__ import annotations

from pathlib import Path

import typer

from convrec.cli.choices import ComputePrecision, Split, WeightPrecision, weight_dtype
from convrec.cli.common import console, renamed
from convrec.train.config import SFTConfig, defaults

D = defaults(SFTConfig)


def sft_command(
    data: Path = typer.Option(..., "--data", help="Data folder (catalog, train and val splits)."),
    model: str = typer.Option(..., "--model", help="Hub id or local model folder (e.g. from `convrec model init`)."),
    out: Path = typer.Option(..., "--out", help="Run folder: RUN/last, RUN/best, metrics.jsonl."),
    sft_set: Path | None = typer.Option(D.sft_set, "--sft-set", help="Stage 1 SFT set; default: train ground truth."),
    epochs: int = typer.Option(D.epochs, "--epochs", help="Passes over the SFT set (--max-steps stops earlier)."),
    max_steps: int | None = typer.Option(D.max_steps, "--max-steps", help="Stop after this many optimiser steps."),
    batch_size: int = typer.Option(D.batch_size, "--batch-size", help="Micro-batch size."),
    grad_accum: int = typer.Option(D.grad_accum, "--grad-accum", help="Gradient accumulation steps."),
    lr: float | None = typer.Option(
        D.lr, "--lr", help="Peak learning rate; default 2e-4 with --lora-r, else 1e-5 (the tiny demo student: 1e-3)."
    ),
    warmup_ratio: float = typer.Option(D.warmup_ratio, "--warmup-ratio", help="Share of steps of linear warm-up."),
    weight_decay: float = typer.Option(D.weight_decay, "--weight-decay", help="AdamW weight decay."),
    max_length: int = typer.Option(D.max_length, "--max-length", help="Context length; prompts are cut from the left."),
    n_items: int = typer.Option(D.n_items, "--n-items", help="List length N the prompt asks for and targets hold."),
    max_grad_norm: float = typer.Option(D.max_grad_norm, "--max-grad-norm", help="Gradient clipping norm."),
    eval_every: int = typer.Option(D.eval_every, "--eval-every", help="Validate and checkpoint every N steps."),
    val_samples: int = typer.Option(
        D.val_samples, "--val-samples", help="Validation samples for loss and generated metrics."
    ),
    val_constrained: bool = typer.Option(
        D.val_constrained, "--val-constrained", help="Validate (and pick RUN/best) on catalog-constrained lists."
    ),
    group_by_length: bool = typer.Option(
        D.group_by_length,
        "--group-by-length",
        help="Batch samples of similar length (shuffled within spans of 32 batches): less padding, faster steps.",
    ),
    catalog_loss: bool = typer.Option(
        D.catalog_loss,
        "--catalog-loss",
        help="Normalise each list token's loss over the ids catalog-constrained decoding allows there "
        "(the head over those ids only); tokens off the catalog walk keep the full vocabulary.",
    ),
    seed: int = typer.Option(D.seed, "--seed", help="Seed of the initialisation, shuffling and dropout."),
    gradient_checkpointing: bool = typer.Option(
        D.gradient_checkpointing, "--gradient-checkpointing", help="Recompute activations in backward: less memory."
    ),
    resume: bool = typer.Option(D.resume, "--resume", help="Continue exactly from RUN/last."),
    keep_last: int = typer.Option(
        D.keep_last, "--keep-last", help="Checkpoints to keep: RUN/last plus K-1 in RUN/checkpoints."
    ),
    lora_r: int = typer.Option(D.lora_r, "--lora-r", help="LoRA rank (0 = full fine-tuning); needs peft."),
    lora_alpha: int = typer.Option(D.lora_alpha, "--lora-alpha", help="LoRA scaling α (the update is α/r · BA)."),
    lora_dropout: float = typer.Option(D.lora_dropout, "--lora-dropout", help="Dropout on the LoRA input."),
    precision: ComputePrecision = typer.Option(
        D.precision,
        "--precision",
        help="Compute precision (autocast); trained weights stay fp32. auto: bf16 on a "
        "GPU with bf16 or a CPU with AVX-512 BF16/AMX for models of 50M+ parameters, else fp32.",
    ),
    deepspeed: Path | None = typer.Option(
        D.deepspeed, "--deepspeed", help="DeepSpeed config (ds_configs/zero2.json); launch with torchrun or deepspeed."
    ),
) -> None:
    """Supervised fine-tuning (behaviour cloning) on catalog-grounded `Title (Year)` lists."""
    # every flag is a field of SFTConfig: paths travel as strings (the config is saved as JSON)
    flags = {k: str(v) if isinstance(v, Path) else v for k, v in locals().items()}
    from convrec.train.sft import train

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
    split: Split = typer.Option("test", "--split", help="The split to answer."),
    out: Path = typer.Option(..., "--out", help="Predictions Parquet to write."),
    n_items: int = typer.Option(20, "--n-items", help="List length N the prompt asks for."),
    batch_size: int = typer.Option(16, "--batch-size", help="Conversations decoded together."),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", help="Default: N × the catalog's long lines under this tokenizer, plus a margin."
    ),
    sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0, "--temperature", help="With --sample: softmax temperature."),
    top_p: float = typer.Option(1.0, "--top-p", help="With --sample: nucleus mass."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N samples."),
    constrained: bool = typer.Option(
        False, "--constrained", help="Catalog-constrained decoding: every line a catalog item, no repeats."
    ),
    exclude_seen: bool = typer.Option(
        True, "--exclude-seen/--keep-seen", help="With --constrained: never list a title the conversation names."
    ),
    precision: WeightPrecision | None = typer.Option(
        None, "--precision", help="Weights in memory (default: as saved; bf16 is faster where the CPU has it)."
    ),
    _dtype: str | None = renamed("--dtype", "--precision"),
) -> None:
    """Generate ranked lists for a split (batched, KV cache), writing the predictions schema."""
    from rich.progress import Progress

    from convrec import artifacts
    from convrec.data import load_split, open_catalog, split_path
    from convrec.decoding.generate import GenerationConfig, generate_predictions, list_token_budget
    from convrec.models.load import load_model, load_tokenizer

    dtype = weight_dtype(precision)
    samples = load_split(data, split)
    samples = samples.head(limit) if limit else samples
    catalog = open_catalog(data)
    tok, mdl = load_tokenizer(model), load_model(model, dtype=dtype)
    cfg = GenerationConfig(
        n_items=n_items,
        max_new_tokens=max_new_tokens or list_token_budget(tok, catalog, n_items),
        batch_size=batch_size,
        do_sample=sample,
        temperature=temperature,
        top_p=top_p,
        constrained=constrained,
        exclude_seen=exclude_seen,
    )
    with Progress(console=console) as progress:
        task = progress.add_task("generating", total=samples["conversation_id"].n_unique())
        preds = generate_predictions(mdl, tok, samples, cfg, lambda k: progress.advance(task, k), catalog)
    artifacts.write(
        preds,
        out,
        artifacts.PREDICTIONS,
        stage="generate",
        params={"model": model, "split": split, "precision": precision, **cfg.__dict__},
        inputs=[split_path(data, split)],
    )
    console.print(f"wrote {preds.height:,} predictions to {out}")
