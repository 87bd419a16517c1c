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
from dataclasses import asdict, dataclass
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
from convrec.train.logits import prefix_logps, selected_logps
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
    shared: bool = True,
):
    """log π_T(completion token | prefix) (B, T) and per-token entropy (B, T, no grad), where π_T is
    softmax(logits / T): the distribution the rollouts were sampled from (as TRL scores them).
    Constrained rollouts pass ``allowed`` (per completion, the ids the catalog mask left at each
    token: `CatalogConstraints.replay`), and π_T is renormalised over them, the masked policy
    that sampled them.

    A group's G rows repeat one prompt: the decoder runs over it once and the G completions continue
    from its cache (`logits.prefix_logps`); logits exist only for the completion positions, a chunk
    at a time, which matters for real vocabularies. ``amp``: the run's compute precision (default fp32).
    ``shared=False`` scores every row as one full sequence instead: the same numbers without a KV
    cache, which transformers turns off under gradient checkpointing (`rl --gradient-checkpointing`)."""
    flat = None if allowed is None else [a for row in allowed for a in row]
    with (amp or precision.resolve("fp32", model)).autocast():
        if not shared:
            return _full_sequence_logps(model, prompt_ids, comp_ids, comp_mask, pad_id, temperature, flat)
        unique, index = shared_prompts(prompt_ids)
        prompt, pmask = left_pad(unique, pad_id, comp_ids.device)
        logp, entropy = prefix_logps(
            model, prompt, pmask, index.to(comp_ids.device), comp_ids, comp_mask.bool(),
            temperature=temperature, entropy=True, allowed=flat,
        )  # fmt: skip
    return logp, entropy


def _full_sequence_logps(model, prompt_ids, comp_ids, comp_mask, pad_id: int, temperature: float, allowed):
    """`token_logps` over prompt + completion rows, one decoder pass each (no cache)."""
    prompt, pmask = left_pad(prompt_ids, pad_id, comp_ids.device)
    ids, attn = torch.cat([prompt, comp_ids], 1), torch.cat([pmask, comp_mask.long()], 1)
    score = torch.cat([torch.zeros_like(pmask, dtype=torch.bool), comp_mask.bool()], 1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logp, entropy = selected_logps(
        model, ids, attn, score, position_ids=pos, temperature=temperature, entropy=True, allowed=allowed
    )
    width = prompt.shape[1]
    return logp[:, width:], entropy[:, width:]


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


@dataclass
class _Run:
    """Everything a step reads: built once by `_setup` (fresh or resumed)."""

    cfg: RLConfig
    model: torch.nn.Module
    ref: torch.nn.Module | None  # the frozen SFT policy of the KL term (None when beta = 0)
    tokenizer: object
    catalog: Catalog
    amp: precision.Precision
    optimizer: torch.optim.Optimizer
    engine: object | None  # the DeepSpeed engine, when --deepspeed
    ckpt: checkpoint.Checkpointer
    rollout_engine: object
    sampling: SamplingConfig
    constraints: CatalogConstraints | None
    finder: MentionFinder | None
    messages: list
    gts: list
    seens: list
    n_train: int
    val_df: object
    log: runlog.RunLog
    clip: tuple[float, float]
    step: int = 0

    @property
    def n_micro(self) -> int:
        return self.cfg.group_size * self.cfg.prompts_per_step // self.cfg.micro_batch_size


@dataclass
class _Rollouts:
    """One step's sampled lists, scored, with what the loss needs per row."""

    prompts: list[list[int]]  # one per rollout (a group's G rows repeat their prompt)
    scored: rl_rewards.Scored
    allowed: list | None  # constrained rollouts: the ids the mask allowed at each token
    seconds: float


def train(cfg: RLConfig, console=None) -> dict:
    """The loop: validate the start, then per step roll out, reward, score the reference, optimise, log."""
    cfg.check()
    run = _setup(cfg)
    progress = runlog.progress_bar(f"rl ({cfg.level})", console, distributed.is_main())
    last: dict = {}
    warned = False
    with progress:
        task = progress.add_task("rl", total=cfg.max_steps, completed=run.step, info="")
        if run.step == 0:
            _validate_and_save(run, progress)  # the starting point of every curve
        while run.step < cfg.max_steps:
            rollouts = _roll_out(run, _next_prompts(run))
            rank_r, seq_r, adv = _advantages(run, rollouts.scored)
            t1 = time.perf_counter()
            ref_logp = _reference_logps(run, rollouts)
            stats = _optimise(run, rollouts, adv, ref_logp)
            run.rollout_engine.sync_weights(run.model)
            run.step += 1
            last = _log_step(run, rollouts, stats, rank_r, seq_r, update_s=time.perf_counter() - t1)
            if last["clipped_ratio"] > CLIPPED_WARN and not warned:
                warned = True
                progress.console.print(
                    f"[yellow]warning:[/] {last['clipped_ratio']:.0%} of step {run.step}'s rollouts hit the "
                    f"{run.sampling.max_new_tokens}-token limit before a stop token: raise --max-new-tokens"
                )
            progress.update(
                task,
                completed=run.step,
                info=f"reward {last['reward_mean']:.3f} · KL {last['kl']:.4f} · in-catalog {last['in_catalog']:.1%}",
            )
            if checkpoint.validation_due(run.step, cfg.max_steps, cfg.eval_every):
                _validate_and_save(run, progress)
    final_loss = last.get("loss", math.nan)
    return {"steps": run.step, "best_val_ndcg@20": run.ckpt.best, "final_loss": final_loss, "last": last}


def _setup(cfg: RLConfig) -> _Run:
    """Models (policy, frozen reference), data, optimiser (+ DeepSpeed), checkpoints, rollout engine, log."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConvrecError(f"{out}: is a file, expected a run folder")
    state = checkpoint.load_state(out / "last") if cfg.resume else None
    torch.manual_seed(cfg.seed)
    catalog = open_catalog(cfg.data)  # the data folder's matching rules (matching.json)
    policy_path = out / "last" if cfg.resume else cfg.model
    tokenizer = load_tokenizer(policy_path)
    dtype = precision.training_dtype(cfg.deepspeed)  # fp32 master weights, even from a bf16 checkpoint
    model = load_model(policy_path, dtype=dtype)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    amp = precision.resolve(cfg.precision, model)
    ref = None
    if cfg.beta > 0:  # frozen, so no fp32 master to keep: stored in the compute dtype (half the memory at bf16)
        ref = load_model(cfg.model, dtype="bfloat16" if amp.compute == torch.bfloat16 else dtype)
        ref.eval().requires_grad_(False)

    train_df = load_split(cfg.data, "train")
    train_df = train_df.filter(train_df["ground_truth"].list.len() > 0)
    if train_df.height == 0:
        raise ConvrecError(f"{cfg.data}: the train split has no sample with a ground truth to reward")
    stops = stop_token_ids(tokenizer, model)
    sampling = SamplingConfig(
        group_size=cfg.group_size,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens or list_token_budget(tokenizer, catalog, cfg.n_items),
        prompts_per_batch=cfg.prompts_per_step,
        stop_ids=tuple(stops),
    )
    eps_low, eps_high = rank_grpo.DEFAULT_CLIP[cfg.level]
    clip = (eps_low if cfg.clip_low is None else cfg.clip_low, eps_high if cfg.clip_high is None else cfg.clip_high)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, weight_decay=0.0)
    engine = None
    if cfg.deepspeed:
        n_micro = cfg.group_size * cfg.prompts_per_step // cfg.micro_batch_size
        ds_cfg = distributed.resolve_config(
            cfg.deepspeed, micro_batch=cfg.micro_batch_size, grad_accum=n_micro, max_grad_norm=cfg.max_grad_norm
        )
        engine = distributed.deepspeed_engine(model, optimizer, None, ds_cfg)
    ckpt = checkpoint.Checkpointer(out, model, tokenizer, optimizer, engine=engine, keep_last=cfg.keep_last)
    if state is not None:
        ckpt.resume(state)
    constraints = finder = None
    if cfg.constrained_rollouts:
        constraints, finder = CatalogConstraints(tokenizer, catalog), MentionFinder(catalog)
    vllm = {  # the vllm engine's settings (an hf engine takes none)
        "gpu_memory_utilization": cfg.vllm_gpu_memory, "sleep": cfg.vllm_sleep, "seed": cfg.seed,
        "max_model_len": cfg.vllm_max_model_len or cfg.max_prompt_tokens + sampling.max_new_tokens,
    }  # fmt: skip
    rollout_engine = make_engine(
        cfg.engine, model, tokenizer, str(policy_path), constraints, **(vllm if cfg.engine == "vllm" else {})
    )
    resumed = ckpt.step if state is not None else None
    log = runlog.RunLog(out, asdict(cfg), resumed_step=resumed, main=distributed.is_main())
    return _Run(
        cfg=cfg, model=model, ref=ref, tokenizer=tokenizer, catalog=catalog,
        amp=amp, optimizer=optimizer, engine=engine, ckpt=ckpt,
        rollout_engine=rollout_engine, sampling=sampling, constraints=constraints, finder=finder,
        messages=train_df["messages"].to_list(), gts=item_lists(train_df["ground_truth"]),
        seens=item_lists(train_df["seen"]), n_train=train_df.height,
        val_df=load_split(cfg.data, "val").head(cfg.val_samples), log=log, clip=clip, step=ckpt.step,
    )  # fmt: skip


def _next_prompts(run: _Run) -> list[int]:
    """This process's P training conversations for the step: a per-epoch shuffle, split across ranks."""
    cfg, world = run.cfg, distributed.world_size()
    per_epoch = max(1, run.n_train // (cfg.prompts_per_step * world))
    epoch, pos = divmod(run.step, per_epoch)
    start = (pos * world + distributed.rank()) * cfg.prompts_per_step
    return _order(run.n_train, cfg.seed, epoch)[start : start + cfg.prompts_per_step]


def _roll_out(run: _Run, index: list[int]) -> _Rollouts:
    """G lists per prompt from the rollout engine, each rank of each list judged by the one matcher."""
    cfg, n = run.cfg, run.cfg.n_items
    t0 = time.perf_counter()
    prompts = encode_prompts(run.tokenizer, [run.messages[i] for i in index], n, cfg.max_prompt_tokens)
    rows = None
    if run.constraints is not None:
        rows = [run.constraints.row_constraint(n, run.finder.rows_in_messages(run.messages[i])) for i in index]
    with run.amp.autocast():  # the run's compute precision (bf16 on CUDA; on a CPU where it pays: `precision`)
        completions = run.rollout_engine.generate(prompts, run.sampling, rows)
    seconds = time.perf_counter() - t0
    rep = [i for i in index for _ in range(cfg.group_size)]
    scored = rl_rewards.score(
        run.tokenizer, completions, [run.gts[i] for i in rep], [run.seens[i] for i in rep], run.catalog, n,
        list(run.sampling.stop_ids),
    )  # fmt: skip
    allowed = None  # constrained rollouts: scored under the masked policy that drew them
    if rows is not None:
        rows_rep = [r for r in rows for _ in range(cfg.group_size)]
        allowed = [run.constraints.replay(r, c) for r, c in zip(rows_rep, completions, strict=True)]
    prompts_rep = [p for p in prompts for _ in range(cfg.group_size)]
    return _Rollouts(prompts_rep, scored, allowed, seconds)


def _advantages(run: _Run, scored: rl_rewards.Scored):
    """Per-rank gains → rank rewards and list (DCG) rewards → group-normalised advantages: per rank for
    Rank-GRPO, per list for GRPO/GSPO."""
    cfg = run.cfg
    gain = rank_grpo.gains(scored.rel, scored.dup, cfg.duplicate_penalty)
    rank_r = rank_grpo.rank_rewards(gain, cfg.reward)
    seq_r = rank_grpo.sequence_rewards(gain)
    adv = rank_grpo.group_advantages(rank_r if cfg.level == "rank" else seq_r, cfg.group_size)
    return rank_r, seq_r, adv.to(run.model.device)  # the loss runs where the policy is


def _micro_slices(run: _Run) -> list[slice]:
    mb = run.cfg.micro_batch_size
    return [slice(s, s + mb) for s in range(0, run.n_micro * mb, mb)]


def _reference_logps(run: _Run, ro: _Rollouts) -> list:
    """log π_ref of each micro-batch (frozen SFT model), once per rollout batch; Nones when beta = 0."""
    slices = _micro_slices(run)
    if run.ref is None:
        return [None] * len(slices)
    ids, seg = ro.scored.ids.to(run.model.device), ro.scored.seg.to(run.model.device)
    with torch.no_grad():
        return [
            token_logps(
                run.ref, ro.prompts[sl], ids[sl], seg[sl] > 0, run.tokenizer.pad_token_id, run.cfg.temperature,
                run.amp, ro.allowed[sl] if ro.allowed else None,
            )[0]
            for sl in slices
        ]  # fmt: skip


def _optimise(run: _Run, ro: _Rollouts, adv: torch.Tensor, ref_logp: list) -> dict:
    """`mu` optimisation passes over the rollouts, each one optimiser step; pass 1 runs on the sampling
    policy, so its log-probs are π_old. Returns the loss terms averaged over passes and micro-batches."""
    cfg, engine, model = run.cfg, run.engine, run.model
    dev = model.device
    ids, seg, lines = ro.scored.ids.to(dev), ro.scored.seg.to(dev), ro.scored.overflow_lines.to(dev)
    slices = _micro_slices(run)
    forward = engine if engine is not None else distributed.Scored(model)  # forward(fn, ...) = fn(model, ...)
    old_logp: list = [None] * len(slices)
    stats = {"loss": 0.0, "objective": 0.0, "kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0}
    loss_fn = rank_grpo.LOSSES[cfg.level]
    w = 1 / (len(slices) * cfg.mu)
    for _ in range(cfg.mu):
        if engine is None:
            run.optimizer.zero_grad(set_to_none=True)
        for j, sl in enumerate(slices):
            mask = seg[sl] > 0
            allowed = ro.allowed[sl] if ro.allowed else None
            pad = run.tokenizer.pad_token_id
            logp, entropy = forward(
                token_logps, ro.prompts[sl], ids[sl], mask, pad, cfg.temperature, run.amp, allowed,
                shared=not cfg.gradient_checkpointing,
            )  # fmt: skip
            if old_logp[j] is None:
                old_logp[j] = logp.detach()
            parts = loss_fn(
                logp, old_logp[j], seg[sl], adv[sl], cfg.n_items, eps_low=run.clip[0], eps_high=run.clip[1],
                shaping=cfg.shaping(), overflow_lines=lines[sl], ref_logp=ref_logp[j], beta=cfg.beta,
            )  # fmt: skip
            if engine is not None:
                engine.backward(parts.loss)  # DeepSpeed divides by the accumulation steps itself
                engine.step()
            else:
                (parts.loss / len(slices)).backward()
            stats["loss"] += float(parts.loss.detach()) * w
            stats["objective"] += float(parts.objective) * w
            stats["kl"] += float(parts.kl) * w
            stats["clip_fraction"] += float(parts.clip_fraction) * w
            stats["entropy"] += float(rank_grpo.masked_sequence_mean(entropy, mask)) * w
        if engine is None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            run.optimizer.step()
    return stats


def _log_step(run: _Run, ro: _Rollouts, stats: dict, rank_r, seq_r, *, update_s: float) -> dict:
    """The step's statistics, averaged over every process's rollouts (equal counts per process)."""
    scored, g = ro.scored, run.cfg.group_size
    totals = rank_r.sum(1)
    local = {
        **stats,
        "reward_mean": float(totals.mean()),
        "reward_sq": float((totals**2).mean()),
        "dcg_mean": float(seq_r.mean()),
        "hits_per_list": float(scored.rel.sum(1).mean()),
        "zero_std_groups": rank_grpo.zero_std_fraction(seq_r, g),
        "zero_std_ranks": rank_grpo.zero_std_fraction(rank_r, g),
        "items_per_list": scored.items_per_list,
        "in_catalog": scored.in_catalog,
        "format_valid": scored.format_valid,
        "duplicate_lines": scored.duplicate_lines,
        "clipped_ratio": scored.clipped,
    }
    flat = distributed.mean_across_ranks_many([*local.values(), *rank_r.mean(0).tolist()])
    last = dict(zip(local, flat[: len(local)], strict=True))
    last["reward_std"] = math.sqrt(max(0.0, last.pop("reward_sq") - last["reward_mean"] ** 2))
    gen_tokens = int((scored.seg > 0).sum())
    last = {
        "step": run.step,
        **last,
        "rank_reward": [round(x, 5) for x in flat[len(local) :]],
        "rollout_s": ro.seconds,
        "update_s": update_s,
        "rollout_tokens_per_s": gen_tokens * distributed.world_size() / max(ro.seconds, 1e-9),
    }
    run.log(last)
    return last


def _validate_in(run: _Run) -> dict:
    """Validation lists decoded under the run's compute precision, as its rollouts are."""
    with run.amp.autocast():
        return validate(run.model, run.tokenizer, run.val_df, run.catalog, run.cfg)


def _validate_and_save(run: _Run, progress) -> None:
    """Validation and checkpoints (`Checkpointer`); step 0 only validates: RUN/last is a trained policy."""
    metrics = run.ckpt.save(run.step, lambda: _validate_in(run), save_last=run.step > 0)
    if metrics is not None:
        run.log({"step": run.step, **{f"val_{k}": v for k, v in metrics.items()}})
        progress.console.print(
            f"step {run.step}: val NDCG@20 {metrics['ndcg@20']:.4f} · R@20 {metrics['recall@20']:.4f} · "
            f"in-catalog {metrics['in_catalog']:.1%}"
        )


def validate(model, tokenizer, val_df, catalog: Catalog, cfg: RLConfig) -> dict:
    return validate_lists(model, tokenizer, val_df, catalog, cfg.n_items, cfg.max_prompt_tokens, cfg.val_constrained)
