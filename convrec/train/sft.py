"""`convrec sft`: behaviour cloning of a causal LM on catalog-grounded lists. One plain loop.

Loss on the completion tokens only; AdamW; linear warmup then cosine decay; gradient accumulation;
periodic validation (loss, and Recall/NDCG/in-catalog/format-valid of generated lists through
`evaluation.evaluate`); `RUN/last` every validation and `RUN/best` by validation NDCG@20;
`--resume` restores model, optimiser, scheduler, RNG and data position, so a killed run ends where
an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from convrec import artifacts
from convrec.data import item_lists, load_split, open_catalog
from convrec.errors import ConvrecError
from convrec.evaluation import EvalConfig, evaluate
from convrec.generate import GenerationConfig, generate_predictions
from convrec.models.load import load_model, load_tokenizer
from convrec.train import checkpoint, distributed, lora, runlog
from convrec.train.sft_data import IGNORE, collate, encode, ground_truth_targets


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
    lr: float = 1e-3
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    keep_last: int = 1  # > 1: also keep RUN/checkpoints/stepN copies of the newest K-1 earlier checkpoints
    max_length: int = 1024
    n_items: int = 20
    eval_every: int = 100
    val_samples: int = 100
    seed: int = 0
    gradient_checkpointing: bool = False
    resume: bool = False
    deepspeed: str | None = None  # a DeepSpeed JSON config (ds_configs/zero2.json): ZeRO-2 across processes
    lora_r: int = 0  # > 0: train LoRA adapters of this rank on all linear layers instead of every weight
    lora_alpha: int = 16
    lora_dropout: float = 0.05


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _autocast():
    """bf16 autocast where the hardware has it (CUDA); full precision on CPU."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


@torch.no_grad()
def _val_loss(model, enc, pad_id: int, batch_size: int) -> float:
    model.eval()
    total, tokens = 0.0, 0
    for s in range(0, len(enc.prompts), batch_size):
        batch = collate(enc, list(range(s, min(s + batch_size, len(enc.prompts)))), pad_id)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        total += float(model(**batch).loss) * n
        tokens += n
    model.train()
    return total / max(1, tokens)


def train(cfg: SFTConfig, console=None) -> dict:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConvrecError(f"{out}: is a file, expected a run folder")
    state = checkpoint.load_state(out / "last") if cfg.resume else None  # fail before any heavy loading
    torch.manual_seed(cfg.seed)
    catalog = open_catalog(cfg.data)  # the data folder's matching rules (matching.json)
    tokenizer = load_tokenizer(cfg.model if not cfg.resume else out / "last")
    if cfg.lora_r:  # the base stays cfg.model; resume reloads the unmerged adapter
        model = lora.wrap(
            load_model(cfg.model),
            cfg.lora_r,
            cfg.lora_alpha,
            cfg.lora_dropout,
            resume_from=out / "last" if cfg.resume else None,
        )
    else:
        model = load_model(cfg.model if not cfg.resume else out / "last")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()

    if cfg.sft_set:
        train_df = artifacts.read(cfg.sft_set, artifacts.SAMPLES)
        targets = item_lists(train_df["ground_truth"])
    else:
        train_df = load_split(cfg.data, "train")
        targets = ground_truth_targets(train_df, catalog, cfg.n_items)
    enc = encode(tokenizer, train_df, targets, cfg.n_items, cfg.max_length)
    val_df = load_split(cfg.data, "val").head(cfg.val_samples)
    val_enc = encode(tokenizer, val_df, ground_truth_targets(val_df, catalog, cfg.n_items), cfg.n_items, cfg.max_length)

    world = distributed.world_size()
    steps_per_epoch = math.ceil(len(enc.prompts) / (cfg.batch_size * cfg.grad_accum * world))
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(int(cfg.warmup_ratio * total), total))
    engine = None
    if cfg.deepspeed:
        ds_cfg = distributed.resolve_config(
            cfg.deepspeed, micro_batch=cfg.batch_size, grad_accum=cfg.grad_accum, max_grad_norm=cfg.max_grad_norm
        )
        engine = distributed.deepspeed_engine(model, optimizer, scheduler, ds_cfg)
    step, best = 0, -1.0
    if state is not None:
        if engine is not None:  # partitioned optimizer state: every rank loads its own shard
            engine.load_checkpoint(str(out / "ds_state"), load_module_strict=True)
        else:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step, best = state["step"], state["best"]
    main = distributed.is_main()
    log = runlog.RunLog(out, asdict(cfg), resumed_step=step if state is not None else None, main=main)

    forward = engine if engine is not None else model
    micro = cfg.batch_size
    progress = runlog.progress_bar("sft", console, main)
    last_loss = float("nan")
    with progress:
        task = progress.add_task("sft", total=total, completed=step, info="")
        while step < total:
            epoch, pos = divmod(step, steps_per_epoch)
            order = _order(len(enc.prompts), cfg.seed, epoch)
            t0, tokens, loss_sum = time.perf_counter(), 0, 0.0
            optimizer.zero_grad(set_to_none=True)
            for a in range(cfg.grad_accum):
                # this rank's slice of the global micro-batch
                start = ((pos * cfg.grad_accum + a) * world + distributed.rank()) * micro
                index = order[start : start + micro] or order[:micro]
                batch = {k: v.to(model.device) for k, v in collate(enc, index, tokenizer.pad_token_id).items()}
                with _autocast():
                    loss = forward(**batch).loss
                if engine is not None:
                    engine.backward(loss)  # scales by 1/grad_accum itself
                    engine.step()  # optimiser + scheduler at the accumulation boundary only
                else:
                    (loss / cfg.grad_accum).backward()
                loss_sum += float(loss.detach()) / cfg.grad_accum
                tokens += int(batch["attention_mask"].sum())
            if engine is None:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
            step += 1
            last_loss = distributed.mean_across_ranks(loss_sum)
            tps = tokens * world / (time.perf_counter() - t0)
            log({"step": step, "loss": last_loss, "lr": scheduler.get_last_lr()[0], "tokens_per_s": tps})
            progress.update(task, completed=step, info=f"loss {last_loss:.3f} · {tps:,.0f} tok/s")
            if step % cfg.eval_every == 0 or step == total:
                state = {"rng": torch.get_rng_state(), "step": step, "best": best}
                if engine is not None:
                    engine.save_checkpoint(str(out / "ds_state"), tag=f"step{step}")  # collective
                else:
                    state |= {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
                if main:
                    metrics = validate(model, tokenizer, val_df, val_enc, catalog, cfg)
                    log({"step": step, **{f"val_{k}": v for k, v in metrics.items()}})
                    progress.console.print(
                        f"step {step}: val loss {metrics['loss']:.3f} · NDCG@20 {metrics['ndcg@20']:.4f} · "
                        f"in-catalog {metrics['in_catalog']:.1%} · format-valid {metrics['format_valid']:.1%}"
                    )
                    if metrics["ndcg@20"] > best:
                        best = state["best"] = metrics["ndcg@20"]
                        checkpoint.save(out / "best", model, tokenizer)
                    checkpoint.save(out / "last", model, tokenizer, state)
                    checkpoint.keep_copy(out, step, cfg.keep_last)
                distributed.barrier()
                if engine is not None and main:  # keep only the newest DeepSpeed state
                    runlog.prune_deepspeed_states(out, step)
    return {"steps": step, "final_loss": last_loss, "best_val_ndcg@20": best, "truncated_prompts": enc.truncated}


def list_metrics(model, tokenizer, val_df, catalog, n_items: int, max_prompt_tokens: int = 768) -> dict:
    """Greedy lists for the validation samples, judged by `evaluation.evaluate` (what eval reports)."""
    gen = GenerationConfig(n_items=n_items, max_new_tokens=14 * n_items, max_prompt_tokens=max_prompt_tokens)
    preds = generate_predictions(model, tokenizer, val_df, gen)
    summary, _ = evaluate(preds, val_df, catalog, EvalConfig(n_items=n_items))
    model.train()
    keep = ("recall@5", "recall@20", "ndcg@5", "ndcg@20", "in_catalog", "format_valid", "mean_list_length")
    return {k: summary[k] for k in keep}


def validate(model, tokenizer, val_df, val_enc, catalog, cfg: SFTConfig) -> dict:
    loss = _val_loss(model, val_enc, tokenizer.pad_token_id, cfg.batch_size)
    return {"loss": loss, **list_metrics(model, tokenizer, val_df, catalog, cfg.n_items)}
