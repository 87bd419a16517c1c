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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from convrec.catalog import Catalog
from convrec.constrained import CatalogConstraints
from convrec.data import item_lists, load_split, open_catalog
from convrec.errors import ConvrecError
from convrec.generate import encode_prompts, left_pad
from convrec.mentions import MentionFinder
from convrec.models.load import load_model, load_tokenizer
from convrec.train import checkpoint, distributed, rank_grpo, rl_rewards, runlog
from convrec.train.rollout import ENGINES, SamplingConfig, make_engine
from convrec.train.sft import _autocast, list_metrics


@dataclass
class RLConfig:
    init: str  # the SFT model (RUN/best): the starting policy and the KL reference
    data: str
    out: str
    level: str = "rank"  # rank (Rank-GRPO) | token (GRPO) | sequence (GSPO)
    reward: str = "exp_inf"  # exp_inf | log (per-rank rewards; GRPO/GSPO always use DCG@N per list)
    group_size: int = 8
    prompts_per_step: int = 4  # per process
    mu: int = 1
    max_steps: int = 100
    lr: float = 1e-5
    beta: float = 1e-3
    clip_low: float | None = None  # None: the level's default (rank_grpo.DEFAULT_CLIP)
    clip_high: float | None = None
    max_grad_norm: float = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.99)
    micro_batch_size: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int | None = None  # default 14 tokens per item
    max_prompt_tokens: int = 768
    n_items: int = 20
    shaping: dict = field(default_factory=lambda: asdict(rank_grpo.Shaping()))
    engine: str = "hf"
    # sample only catalog lines (trie-masked, no repeats, seen items excluded); the loss still uses the
    # unconstrained policy's log-probabilities, so the policy itself learns to stay in the catalog
    constrained_rollouts: bool = False
    eval_every: int = 25
    val_samples: int = 100
    seed: int = 0
    resume: bool = False
    deepspeed: str | None = None
    keep_last: int = 1

    def check(self) -> None:
        if self.level not in rank_grpo.LEVELS:
            raise ConvrecError(f"unknown level '{self.level}': choose one of {', '.join(rank_grpo.LEVELS)}")
        if self.reward not in rank_grpo.REWARDS:
            raise ConvrecError(f"unknown reward '{self.reward}': choose one of {', '.join(rank_grpo.REWARDS)}")
        if self.engine not in ENGINES:
            raise ConvrecError(f"unknown engine '{self.engine}': choose one of {', '.join(ENGINES)}")
        for name in ("group_size", "prompts_per_step", "mu", "max_steps", "micro_batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ConvrecError(f"--{name.replace('_', '-')} must be at least 1")
        if self.constrained_rollouts and self.engine != "hf":
            raise ConvrecError("--constrained-rollouts needs --engine hf (the vllm engine samples unconstrained)")
        if self.group_size < 2:
            raise ConvrecError("--group-size must be at least 2: advantages compare samples of one prompt")
        if (self.group_size * self.prompts_per_step) % self.micro_batch_size:
            raise ConvrecError(
                f"--micro-batch-size {self.micro_batch_size} must divide the rollouts per step "
                f"({self.prompts_per_step} prompts × {self.group_size} samples)"
            )


def _order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 7_919 + epoch)
    return torch.randperm(n, generator=g).tolist()


def token_logps(model, prompt_ids: list[list[int]], comp_ids: torch.Tensor, comp_mask: torch.Tensor, pad_id: int):
    """log π(completion token | prefix) (B, T) and per-token entropy (B, T, no grad).

    Prompts are left-padded so every completion starts at the same column; logits are kept only
    for the completion positions (`logits_to_keep`), which matters for real vocabularies."""
    prompt, pmask = left_pad(prompt_ids, pad_id, comp_ids.device)
    ids = torch.cat([prompt, comp_ids], dim=1)
    attn = torch.cat([pmask, comp_mask.long()], dim=1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    t = comp_ids.shape[1]
    with _autocast():
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=t + 1).logits
    logits = logits[:, :-1].float()  # position j predicts completion token j
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, comp_ids.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp * comp_mask, entropy


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
    model = load_model(policy_path)
    model.train()
    ref = None
    if cfg.beta > 0:
        ref = load_model(cfg.init)
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
    sampling = SamplingConfig(
        group_size=cfg.group_size,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens or 14 * n,
        prompts_per_batch=cfg.prompts_per_step,
    )
    eps_low, eps_high = rank_grpo.DEFAULT_CLIP[cfg.level]
    eps_low = eps_low if cfg.clip_low is None else cfg.clip_low
    eps_high = eps_high if cfg.clip_high is None else cfg.clip_high
    shaping = rank_grpo.Shaping(**cfg.shaping)
    rollouts = cfg.group_size * cfg.prompts_per_step
    n_micro = rollouts // cfg.micro_batch_size

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, weight_decay=0.0)
    engine = None
    if cfg.deepspeed:
        ds_cfg = distributed.resolve_config(
            cfg.deepspeed, micro_batch=cfg.micro_batch_size, grad_accum=n_micro, max_grad_norm=cfg.max_grad_norm
        )
        engine = distributed.deepspeed_engine(model, optimizer, None, ds_cfg)
    step, best = 0, -1.0
    if state is not None:
        if engine is not None:
            engine.load_checkpoint(str(out / "ds_state"), load_module_strict=True)
        else:
            optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        step, best = state["step"], state["best"]
    constraints = finder = None
    if cfg.constrained_rollouts:
        constraints, finder = CatalogConstraints(tokenizer, catalog), MentionFinder(catalog)
    rollout_engine = make_engine(cfg.engine, model, tokenizer, str(policy_path), constraints, seed=cfg.seed)

    main = distributed.is_main()
    log = runlog.RunLog(out, asdict(cfg), resumed_step=step if state is not None else None, main=main)

    def validate_and_save() -> None:
        nonlocal best
        ckpt = {"rng": torch.get_rng_state(), "step": step, "best": best}
        if engine is not None:
            engine.save_checkpoint(str(out / "ds_state"), tag=f"step{step}")  # collective
        else:
            ckpt["optimizer"] = optimizer.state_dict()
        if main:
            metrics = validate(model, tokenizer, val_df, catalog, cfg)
            log({"step": step, **{f"val_{k}": v for k, v in metrics.items()}})
            progress.console.print(
                f"step {step}: val NDCG@20 {metrics['ndcg@20']:.4f} · R@20 {metrics['recall@20']:.4f} · "
                f"in-catalog {metrics['in_catalog']:.1%}"
            )
            if metrics["ndcg@20"] > best:
                best = ckpt["best"] = metrics["ndcg@20"]
                checkpoint.save(out / "best", model, tokenizer)
            if step > 0:
                checkpoint.save(out / "last", model, tokenizer, ckpt)
                checkpoint.keep_copy(out, step, cfg.keep_last)
        distributed.barrier()
        if engine is not None and main:
            runlog.prune_deepspeed_states(out, step)

    forward = engine if engine is not None else model
    progress = runlog.progress_bar(f"rl ({cfg.level})", console, main)
    per_epoch = max(1, train_df.height // (cfg.prompts_per_step * world))
    last: dict = {}
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
                tokenizer, completions, [gts[i] for i in rep], [seens[i] for i in rep], catalog, n
            )
            prompt_rep = [prompts[j] for j in range(len(index)) for _ in range(cfg.group_size)]

            # 2. rewards and advantages
            rank_r = rank_grpo.rank_rewards(scored.rel, cfg.reward)
            seq_r = rank_grpo.sequence_rewards(scored.rel)
            if cfg.level == "rank":
                adv = rank_grpo.group_advantages(rank_r, cfg.group_size)
            else:
                adv = rank_grpo.group_advantages(seq_r, cfg.group_size)
            dev = model.device  # rewards are scored on the CPU; the loss runs where the policy is
            ids, seg, adv = scored.ids.to(dev), scored.seg.to(dev), adv.to(dev)

            # 3. reference log-probabilities (frozen SFT model), once per rollout batch
            t1 = time.perf_counter()
            mb = cfg.micro_batch_size
            slices = [slice(s, s + mb) for s in range(0, rollouts, mb)]
            ref_logp = [None] * n_micro
            if ref is not None:
                with torch.no_grad():
                    for j, sl in enumerate(slices):
                        ref_logp[j] = token_logps(ref, prompt_rep[sl], ids[sl], seg[sl] > 0, tokenizer.pad_token_id)[0]

            # 4. mu optimisation passes; pass 1 runs on the sampling policy, so its log-probs are π_old
            old_logp = [None] * n_micro
            stats = {"loss": 0.0, "objective": 0.0, "kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0}
            loss_fn = rank_grpo.LOSSES[cfg.level]
            for _ in range(cfg.mu):
                if engine is None:
                    optimizer.zero_grad(set_to_none=True)
                for j, sl in enumerate(slices):
                    mask = seg[sl] > 0
                    logp, entropy = token_logps(forward, prompt_rep[sl], ids[sl], mask, tokenizer.pad_token_id)
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
            progress.update(
                task,
                completed=step,
                info=f"reward {last['reward_mean']:.3f} · KL {last['kl']:.4f} · in-catalog {last['in_catalog']:.1%}",
            )
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                validate_and_save()
    return {"steps": step, "best_val_ndcg@20": best, "final_loss": last.get("loss", math.nan), "last": last}


def validate(model, tokenizer, val_df, catalog: Catalog, cfg: RLConfig) -> dict:
    return list_metrics(model, tokenizer, val_df, catalog, cfg.n_items, cfg.max_prompt_tokens)
