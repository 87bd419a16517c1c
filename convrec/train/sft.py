"""`convrec sft`: behaviour cloning of a causal LM on catalog-grounded lists. One plain loop.

Loss on the completion tokens only; AdamW; linear warmup then cosine decay; gradient accumulation;
periodic validation (loss, and Recall/NDCG/in-catalog/format-valid of generated lists through
`evaluation.evaluate`); `RUN/last` every validation and `RUN/best` by validation NDCG@20;
`--resume` restores model, optimiser, scheduler, RNG and data position, so a killed run ends where
an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from convrec import artifacts
from convrec.data import item_lists, load_split, open_catalog
from convrec.decoding.generate import GenerationConfig
from convrec.errors import ConvrecError
from convrec.evaluation.evaluate import validate_lists
from convrec.models.load import load_model, load_tokenizer
from convrec.train import checkpoint, distributed, lora, precision, runlog
from convrec.train.config import SFTConfig
from convrec.train.logits import completion_loss
from convrec.train.sft_data import IGNORE, batch_allowed, collate, encode, ground_truth_targets, with_catalog_allowed


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


GROUP_SPAN = 32  # batches sorted together by --group-by-length


def _order(n: int, seed: int, epoch: int, lengths: list[int] | None = None, batch: int = 1) -> list[int]:
    """The epoch's sample order; consecutive ``batch``-sized slices are the batches. With ``lengths``
    the shuffled order is cut into spans of `GROUP_SPAN` batches, each span sorted by length and cut
    into batches, and a span's full batches shuffled (its short last one stays last): every sample
    once per epoch, as before, with the padding of near-equal lengths (HF Trainer's group_by_length)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    if lengths is None:
        return order
    out: list[int] = []
    for s in range(0, n, batch * GROUP_SPAN):
        span = sorted(order[s : s + batch * GROUP_SPAN], key=lengths.__getitem__)
        batches = [span[j : j + batch] for j in range(0, len(span), batch)]
        full = [b for b in batches if len(b) == batch]
        for k in torch.randperm(len(full), generator=g).tolist():
            out += full[k]
        out += [i for b in batches if len(b) < batch for i in b]
    return out


@torch.no_grad()
def _val_loss(model, enc, pad_id: int, batch_size: int, amp: precision.Precision) -> float:
    model.eval()
    total, tokens = 0.0, 0
    for s in range(0, len(enc.prompts), batch_size):
        batch = collate(enc, list(range(s, min(s + batch_size, len(enc.prompts)))), pad_id)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        with amp.autocast():
            loss, n = completion_loss(model, batch, IGNORE)
        total += float(loss) * n
        tokens += n
    model.train()
    return total / max(1, tokens)


def train(cfg: SFTConfig, console=None) -> dict:
    cfg.check()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConvrecError(f"{out}: is a file, expected a run folder")
    state = checkpoint.load_state(out / "last") if cfg.resume else None  # fail before any heavy loading
    torch.manual_seed(cfg.seed)
    catalog = open_catalog(cfg.data)  # the data folder's matching rules (matching.json)
    tokenizer = load_tokenizer(cfg.model if not cfg.resume else out / "last")
    dtype = precision.training_dtype(cfg.deepspeed)  # fp32 master weights, even from a bf16 checkpoint
    if cfg.lora_r:  # the base stays cfg.model; resume reloads the unmerged adapter
        model = lora.wrap(
            load_model(cfg.model, dtype=dtype),
            cfg.lora_r,
            cfg.lora_alpha,
            cfg.lora_dropout,
            resume_from=out / "last" if cfg.resume else None,
        )
    else:
        model = load_model(cfg.model if not cfg.resume else out / "last", dtype=dtype)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    amp = precision.resolve(cfg.precision, model)

    if cfg.sft_set:
        train_df = artifacts.read(cfg.sft_set, artifacts.SAMPLES)
        if "unparseable" in train_df.columns:  # remap's mark: the teacher gave no list, even re-asked
            train_df = train_df.filter(~train_df["unparseable"].fill_null(False))
        targets = item_lists(train_df["ground_truth"])
    else:
        train_df = load_split(cfg.data, "train")
        targets = ground_truth_targets(train_df, catalog, cfg.n_items)
    enc = encode(tokenizer, train_df, targets, cfg.n_items, cfg.max_length)
    if cfg.catalog_loss:
        enc, share = with_catalog_allowed(tokenizer, enc, catalog, [len(t) for t in targets])
        if console is not None:
            console.print(f"--catalog-loss: {share:.1%} of target tokens normalised over the catalog-allowed ids")
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
    ckpt = checkpoint.Checkpointer(
        out, model, tokenizer, optimizer, scheduler=scheduler, engine=engine, keep_last=cfg.keep_last
    )
    if state is not None:
        ckpt.resume(state)
    step = ckpt.step
    main = distributed.is_main()
    log = runlog.RunLog(out, asdict(cfg), resumed_step=step if state is not None else None, main=main)

    forward = engine if engine is not None else distributed.Scored(model)  # forward(fn, ...) = fn(model, ...)
    micro = cfg.batch_size
    lengths = (
        [len(p) + len(c) for p, c in zip(enc.prompts, enc.completions, strict=True)] if cfg.group_by_length else None
    )
    progress = runlog.progress_bar("sft", console, main)
    last_loss = float("nan")
    with progress:
        task = progress.add_task("sft", total=total, completed=step, info="")
        order_epoch, order = None, []
        while step < total:
            epoch, pos = divmod(step, steps_per_epoch)
            if epoch != order_epoch:  # one shuffle (and length grouping) per epoch, not per step
                order_epoch, order = epoch, _order(len(enc.prompts), cfg.seed, epoch, lengths, micro)
            t0, tokens, loss_sum = time.perf_counter(), 0, 0.0
            if engine is None:  # DeepSpeed zeroes its own; set_to_none here drops ZeRO-offload's fp32 grad buffers
                optimizer.zero_grad(set_to_none=True)
            for a in range(cfg.grad_accum):
                # this rank's slice of the global micro-batch
                start = ((pos * cfg.grad_accum + a) * world + distributed.rank()) * micro
                index = order[start : start + micro] or order[:micro]
                batch = {k: v.to(model.device) for k, v in collate(enc, index, tokenizer.pad_token_id).items()}
                with amp.autocast():
                    loss = forward(completion_loss, batch, IGNORE, batch_allowed(enc, index))[0]
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
            seconds = time.perf_counter() - t0
            tps = tokens * world / seconds
            lr = scheduler.get_last_lr()[0]
            log({"step": step, "loss": last_loss, "lr": lr, "tokens_per_s": tps, "step_s": seconds})
            progress.update(task, completed=step, info=f"loss {last_loss:.3f} · {tps:,.0f} tok/s")
            if checkpoint.validation_due(step, total, cfg.eval_every):
                metrics = ckpt.save(step, lambda: validate(model, tokenizer, val_df, val_enc, catalog, cfg))
                if metrics is not None:
                    log({"step": step, **{f"val_{k}": v for k, v in metrics.items()}})
                    progress.console.print(
                        f"step {step}: val loss {metrics['loss']:.3f} · NDCG@20 {metrics['ndcg@20']:.4f} · "
                        f"in-catalog {metrics['in_catalog']:.1%} · format-valid {metrics['format_valid']:.1%}"
                    )
    return {"steps": step, "final_loss": last_loss, "best_val_ndcg@20": ckpt.best, "truncated_prompts": enc.truncated}


def validate(model, tokenizer, val_df, val_enc, catalog, cfg: SFTConfig) -> dict:
    amp = precision.resolve(cfg.precision, model)
    loss = _val_loss(model, val_enc, tokenizer.pad_token_id, cfg.batch_size, amp)
    with amp.autocast():  # the lists decoded under the run's compute precision, as its loss is
        lists = validate_lists(
            model, tokenizer, val_df, catalog, cfg.n_items, GenerationConfig.max_prompt_tokens, cfg.val_constrained
        )
    return {"loss": loss, **lists}
