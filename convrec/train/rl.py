"""`convrec rl`: Rank-GRPO (and the token-level GRPO / sequence-level GSPO baselines). One plain loop.

Each step: take P training conversations; sample G lists for each with the rollout engine; score
every rank with the shared catalog matcher; turn rewards into advantages (per rank for Rank-GRPO,
per list for GRPO/GSPO); then `mu` optimisation passes over the rollouts, each one optimiser step
with the clipped importance-ratio objective and a k3 KL to the frozen SFT reference. The maths
lives in `rank_grpo.py`; this file only moves tensors through it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from convrec.catalog import Catalog
from convrec.data import item_lists, load_split, open_catalog
from convrec.decoding.constrained import CatalogConstraints
from convrec.decoding.generate import encode_prompts, left_pad, list_token_budget
from convrec.decoding.mentions import MentionFinder
from convrec.errors import ConvrecError
from convrec.evaluation.evaluate import validate_lists
from convrec.models.load import load_model, load_tokenizer, stop_token_ids
from convrec.train import checkpoint, distributed, precision, rank_grpo, rl_rewards, runlog
from convrec.train.config import RLConfig
from convrec.train.logits import prefix_logps
from convrec.train.rollout import SamplingConfig, make_engine

CLIPPED_WARN = 0.05  # warn once when more rollouts than this are cut by the token budget


def _order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 7_919 + epoch)
    return torch.randperm(n, generator=g).tolist()


def token_logps(
    model,
    prompt_ids: list[list[int]],
    comp_ids: torch.Tensor,
    comp_mask: torch.Tensor,
    pad_id: int,
    temperature: float = 1.0,
    amp: precision.Precision | None = None,
    allowed: list[list[torch.Tensor]] | None = None,
):
    """log π_T(completion token | prefix) (B, T) and per-token entropy (B, T, no grad), where π_T is
    softmax(logits / T): the distribution the rollouts were sampled from (as TRL scores them).
    Constrained rollouts pass ``allowed`` (per completion, the ids the catalog mask left at each
    token: `CatalogConstraints.replay`), and π_T is renormalised over them, the masked policy
    that sampled them.

    A group's G rows repeat one prompt: the decoder runs over it once and the G completions continue
    from its cache (`logits.prefix_logps`); logits exist only for the completion positions, a chunk
    at a time, which matters for real vocabularies. ``amp``: the run's compute precision (default fp32)."""
    unique, index = shared_prompts(prompt_ids)
    prompt, pmask = left_pad(unique, pad_id, comp_ids.device)
    flat = None if allowed is None else [a for row in allowed for a in row]
    with (amp or precision.resolve("fp32", model)).autocast():
        logp, entropy = prefix_logps(
            model, prompt, pmask, index.to(comp_ids.device), comp_ids, comp_mask.bool(),
            temperature=temperature, entropy=True, allowed=flat,
        )  # fmt: skip
    return logp, entropy


def shared_prompts(prompt_ids: list[list[int]]) -> tuple[list[list[int]], torch.Tensor]:
    """Runs of equal consecutive prompts (a GRPO group's G copies) → each prompt once, and the index
    of every row's prompt in that list."""
    unique: list[list[int]] = []
    index = []
    for p in prompt_ids:
        if not unique or unique[-1] != p:
            unique.append(p)
        index.append(len(unique) - 1)
    return unique, torch.tensor(index)


def train(cfg: RLConfig, console=None) -> dict:
    cfg.check()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConvrecError(f"{out}: is a file, expected a run folder")
    state = checkpoint.load_state(out / "last") if cfg.resume else None
    torch.manual_seed(cfg.seed)
    catalog = open_catalog(cfg.data)  # the data folder's matching rules (matching.json)
    policy_path = out / "last" if cfg.resume else cfg.init
    tokenizer = load_tokenizer(policy_path)
    dtype = precision.training_dtype(cfg.deepspeed)  # fp32 master weights, even from a bf16 checkpoint
    model = load_model(policy_path, dtype=dtype)
    model.train()
    amp = precision.resolve(cfg.precision, model)
    ref = None
    if cfg.beta > 0:
        ref = load_model(cfg.init, dtype=dtype)
        ref.eval().requires_grad_(False)

    train_df = load_split(cfg.data, "train")
    train_df = train_df.filter(train_df["ground_truth"].list.len() > 0)
    if train_df.height == 0:
        raise ConvrecError(f"{cfg.data}: the train split has no sample with a ground truth to reward")
    gts, seens = item_lists(train_df["ground_truth"]), item_lists(train_df["seen"])
    messages = train_df["messages"].to_list()
    val_df = load_split(cfg.data, "val").head(cfg.val_samples)

    world, rank = distributed.world_size(), distributed.rank()
    n = cfg.n_items
    stops = stop_token_ids(tokenizer, model)
    sampling = SamplingConfig(
        group_size=cfg.group_size,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens or list_token_budget(tokenizer, catalog, n),
        prompts_per_batch=cfg.prompts_per_step,
        stop_ids=tuple(stops),
    )
    eps_low, eps_high = rank_grpo.DEFAULT_CLIP[cfg.level]
    eps_low = eps_low if cfg.clip_low is None else cfg.clip_low
    eps_high = eps_high if cfg.clip_high is None else cfg.clip_high
    shaping = cfg.shaping()
    rollouts = cfg.group_size * cfg.prompts_per_step
    n_micro = rollouts // cfg.micro_batch_size

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, weight_decay=0.0)
    engine = None
    if cfg.deepspeed:
        ds_cfg = distributed.resolve_config(
            cfg.deepspeed, micro_batch=cfg.micro_batch_size, grad_accum=n_micro, max_grad_norm=cfg.max_grad_norm
        )
        engine = distributed.deepspeed_engine(model, optimizer, None, ds_cfg)
    ckpt = checkpoint.Checkpointer(out, model, tokenizer, optimizer, engine=engine, keep_last=cfg.keep_last)
    if state is not None:
        ckpt.resume(state)
    step = ckpt.step
    constraints = finder = None
    if cfg.constrained_rollouts:
        constraints, finder = CatalogConstraints(tokenizer, catalog), MentionFinder(catalog)
    rollout_engine = make_engine(cfg.engine, model, tokenizer, str(policy_path), constraints, seed=cfg.seed)

    main = distributed.is_main()
    log = runlog.RunLog(out, asdict(cfg), resumed_step=step if state is not None else None, main=main)

    forward = engine if engine is not None else model
    progress = runlog.progress_bar(f"rl ({cfg.level})", console, main)

    def validate_and_save() -> None:
        """Validation and checkpoints (`Checkpointer`); step 0 only validates: RUN/last is a trained policy."""
        metrics = ckpt.save(step, lambda: validate(model, tokenizer, val_df, catalog, cfg), save_last=step > 0)
        if metrics is not None:
            log({"step": step, **{f"val_{k}": v for k, v in metrics.items()}})
            progress.console.print(
                f"step {step}: val NDCG@20 {metrics['ndcg@20']:.4f} · R@20 {metrics['recall@20']:.4f} · "
                f"in-catalog {metrics['in_catalog']:.1%}"
            )

    per_epoch = max(1, train_df.height // (cfg.prompts_per_step * world))
    last: dict = {}
    warned = False
    with progress:
        task = progress.add_task("rl", total=cfg.max_steps, completed=step, info="")
        if step == 0:
            validate_and_save()  # the starting point of every curve
        while step < cfg.max_steps:
            epoch, pos = divmod(step, per_epoch)
            order = _order(train_df.height, cfg.seed, epoch)
            start = (pos * world + rank) * cfg.prompts_per_step
            index = order[start : start + cfg.prompts_per_step]

            # 1. rollouts: G lists per prompt
            t0 = time.perf_counter()
            prompts = encode_prompts(tokenizer, [messages[i] for i in index], n, cfg.max_prompt_tokens)
            rows = None
            if constraints is not None:
                rows = [constraints.row_constraint(n, finder.rows_in_messages(messages[i])) for i in index]
            completions = rollout_engine.generate(prompts, sampling, rows)
            rollout_s = time.perf_counter() - t0
            rep = [i for i in index for _ in range(cfg.group_size)]
            scored = rl_rewards.score(
                tokenizer, completions, [gts[i] for i in rep], [seens[i] for i in rep], catalog, n, stops
            )
            prompt_rep = [prompts[j] for j in range(len(index)) for _ in range(cfg.group_size)]
            allowed = None  # constrained rollouts: scored under the masked policy that drew them
            if rows is not None:
                rows_rep = [r for r in rows for _ in range(cfg.group_size)]
                allowed = [constraints.replay(r, c) for r, c in zip(rows_rep, completions, strict=True)]

            # 2. rewards and advantages
            gain = rank_grpo.gains(scored.rel, scored.dup, cfg.duplicate_penalty)
            rank_r = rank_grpo.rank_rewards(gain, cfg.reward)
            seq_r = rank_grpo.sequence_rewards(gain)
            if cfg.level == "rank":
                adv = rank_grpo.group_advantages(rank_r, cfg.group_size)
            else:
                adv = rank_grpo.group_advantages(seq_r, cfg.group_size)
            dev = model.device  # rewards are scored on the CPU; the loss runs where the policy is
            ids, seg, adv = scored.ids.to(dev), scored.seg.to(dev), adv.to(dev)
            lines = scored.overflow_lines.to(dev)

            # 3. reference log-probabilities (frozen SFT model), once per rollout batch
            t1 = time.perf_counter()
            mb, pad = cfg.micro_batch_size, tokenizer.pad_token_id
            slices = [slice(s, s + mb) for s in range(0, rollouts, mb)]
            allowed_mb = [allowed[sl] if allowed else None for sl in slices]
            ref_logp = [None] * n_micro
            if ref is not None:
                with torch.no_grad():
                    for j, sl in enumerate(slices):
                        ref_logp[j] = token_logps(
                            ref, prompt_rep[sl], ids[sl], seg[sl] > 0, pad, cfg.temperature, amp, allowed_mb[j]
                        )[0]

            # 4. mu optimisation passes; pass 1 runs on the sampling policy, so its log-probs are π_old
            old_logp = [None] * n_micro
            stats = {"loss": 0.0, "objective": 0.0, "kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0}
            loss_fn = rank_grpo.LOSSES[cfg.level]
            for _ in range(cfg.mu):
                if engine is None:
                    optimizer.zero_grad(set_to_none=True)
                for j, sl in enumerate(slices):
                    mask = seg[sl] > 0
                    logp, entropy = token_logps(
                        forward, prompt_rep[sl], ids[sl], mask, pad, cfg.temperature, amp, allowed_mb[j]
                    )
                    if old_logp[j] is None:
                        old_logp[j] = logp.detach()
                    parts = loss_fn(
                        logp,
                        old_logp[j],
                        seg[sl],
                        adv[sl],
                        n,
                        eps_low=eps_low,
                        eps_high=eps_high,
                        shaping=shaping,
                        overflow_lines=lines[sl],
                        ref_logp=ref_logp[j],
                        beta=cfg.beta,
                    )
                    if engine is not None:
                        engine.backward(parts.loss)  # DeepSpeed divides by the accumulation steps itself
                        engine.step()
                    else:
                        (parts.loss / n_micro).backward()
                    w = 1 / (n_micro * cfg.mu)
                    stats["loss"] += float(parts.loss.detach()) * w
                    stats["objective"] += float(parts.objective) * w
                    stats["kl"] += float(parts.kl) * w
                    stats["clip_fraction"] += float(parts.clip_fraction) * w
                    stats["entropy"] += float(rank_grpo.masked_sequence_mean(entropy, mask)) * w
                if engine is None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
            rollout_engine.sync_weights(model)
            update_s = time.perf_counter() - t1
            step += 1

            gen_tokens = int((scored.seg > 0).sum())
            totals = rank_r.sum(1)
            local = {
                **stats,
                "reward_mean": float(totals.mean()),
                "reward_sq": float((totals**2).mean()),
                "dcg_mean": float(seq_r.mean()),
                "hits_per_list": float(scored.rel.sum(1).mean()),
                "zero_std_groups": rank_grpo.zero_std_fraction(seq_r, cfg.group_size),
                "zero_std_ranks": rank_grpo.zero_std_fraction(rank_r, cfg.group_size),
                "items_per_list": scored.items_per_list,
                "in_catalog": scored.in_catalog,
                "format_valid": scored.format_valid,
                "duplicate_lines": scored.duplicate_lines,
                "clipped_ratio": scored.clipped,
            }
            # every statistic is over all processes' rollouts (equal counts per process)
            flat = distributed.mean_across_ranks_many([*local.values(), *rank_r.mean(0).tolist()])
            last = dict(zip(local, flat[: len(local)], strict=True))
            last["reward_std"] = math.sqrt(max(0.0, last.pop("reward_sq") - last["reward_mean"] ** 2))
            last = {
                "step": step,
                **last,
                "rank_reward": [round(x, 5) for x in flat[len(local) :]],
                "rollout_s": rollout_s,
                "update_s": update_s,
                "rollout_tokens_per_s": gen_tokens * world / max(rollout_s, 1e-9),
            }
            log(last)
            if last["clipped_ratio"] > CLIPPED_WARN and not warned:
                warned = True
                progress.console.print(
                    f"[yellow]warning:[/] {last['clipped_ratio']:.0%} of step {step}'s rollouts hit the "
                    f"{sampling.max_new_tokens}-token limit before a stop token: raise --max-new-tokens"
                )
            progress.update(
                task,
                completed=step,
                info=f"reward {last['reward_mean']:.3f} · KL {last['kl']:.4f} · in-catalog {last['in_catalog']:.1%}",
            )
            if checkpoint.validation_due(step, cfg.max_steps, cfg.eval_every):
                validate_and_save()
    return {"steps": step, "best_val_ndcg@20": ckpt.best, "final_loss": last.get("loss", math.nan), "last": last}


def validate(model, tokenizer, val_df, catalog: Catalog, cfg: RLConfig) -> dict:
    return validate_lists(model, tokenizer, val_df, catalog, cfg.n_items, cfg.max_prompt_tokens, cfg.val_constrained)
