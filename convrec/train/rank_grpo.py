"""Rank-GRPO maths, with token-level GRPO and sequence-level GSPO: pure tensor functions.

Shapes: B completions, grouped by prompt (P prompts × G samples, the G of a prompt consecutive);
T completion tokens; N items per list. ``mask`` marks real completion tokens (not padding).

Segments. A completion is cut into items by its newline tokens (the newline belongs to the item
before it). ``segment_ranks`` gives every token a segment id: 1..N for the items, OVERFLOW = N + 1
for tokens after the N-th item, EOS = N + 2 for the end-of-sequence token, 0 for padding.

Rewards per rank (rel_k = 1 if item k hits an unmatched ground-truth item, is in catalog and not
seen, else 0; dup_k = 1 if item k repeats an earlier item of its list; gain g_k = rel_k − λ_dup·dup_k,
λ_dup = 0 by default, the paper's rule, where a repeat earns the 0 of a miss):
    exp_inf:  r_k = g_k
    log:      r_k = Σ_{j=k..N} g_j / log2(j + 1)            (DCG@k:N, causal: never earlier ranks)
Advantages across the G samples of a prompt:  A = (r − mean_G r) / (std_G r + 1e-4).
Rank-GRPO ratio per item:  w_{i,k} = exp( mean_{t ∈ item k} [log π_θ(t) − log π_old(t)] ).
Objective (maximised):  (1/(B·N)) Σ_i Σ_k min( w A, clip(w, 1 − ε_low, 1 + ε_high) A ),
minus β · KL(π_θ ‖ π_ref) with the k3 estimator per token: e^{ref − logp} − (ref − logp) − 1.

Length shaping (the released code's values) enters as extra advantages: −0.1 for the overflow, −0.1
for an EOS after fewer than N items, +0.1 for an EOS right after exactly N items with no overflow (an
EOS after overflow is itself overflow, −0.1). In Rank-GRPO the overflow is one more segment with one
ratio (the geometric mean over its tokens) whose advantage is −0.1 × units: ``weight = "item"``
(default) counts each line past the N-th as one unit, so an over-long list pays like the extra items
it wrote (Eq. 7 weighs items); ``weight = "token"`` counts every overflow token, the released code's
per-token penalty. With N = 20 and lines of 3 tokens, a 25-item list pays 5 × −0.1 + EOS −0.1 = −0.6
item units (token weight: 15 × −0.1 − 0.1 = −1.6) and a 19-item list −0.1, each divided by B·N.
Token-level GRPO and GSPO weigh every token alike, so their shaping is per token in both cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from convrec.train.config import LEVELS, REWARDS, SHAPING_WEIGHTS, Shaping  # noqa: F401  (the maths' choices)

ADV_EPS = 1e-4


def segment_ranks(breaks: torch.Tensor, is_eos: torch.Tensor, mask: torch.Tensor, n_items: int) -> torch.Tensor:
    """Segment id per token (B, T): 1..N items, N+1 overflow, N+2 EOS, 0 padding.

    ``breaks`` marks tokens that end an item (their text holds a newline). A token's rank is one
    plus the number of breaks strictly before it, so the newline stays with the item it ends.
    """
    breaks = breaks & mask
    rank = 1 + torch.cumsum(breaks.long(), dim=1) - breaks.long()
    rank = rank.clamp(max=n_items + 1)
    rank = torch.where(is_eos & mask, n_items + 2, rank)
    return torch.where(mask, rank, 0)


def items_emitted(seg: torch.Tensor, n_items: int) -> torch.Tensor:
    """Number of non-empty item segments per completion (B,)."""
    present = torch.zeros(seg.shape[0], n_items + 3, dtype=torch.bool, device=seg.device)
    present.scatter_(1, seg, torch.ones_like(seg, dtype=torch.bool))
    return present[:, 1 : n_items + 1].sum(dim=1)


def overflow_lines(breaks: torch.Tensor, seg: torch.Tensor, n_items: int) -> torch.Tensor:
    """Lines written past the N-th item per completion (B,): overflow tokens that start a line, i.e.
    whose previous token ended one (the first overflow token always follows the N-th break)."""
    prev_break = torch.zeros_like(breaks)
    prev_break[:, 1:] = breaks[:, :-1]
    return ((seg == n_items + 1) & prev_break).sum(dim=1)


def gains(rel: torch.Tensor, dup: torch.Tensor | None = None, dup_penalty: float = 0.0) -> torch.Tensor:
    """g_k = rel_k − λ_dup · dup_k (B, N): what every reward sums; λ_dup = 0 leaves rel as it is."""
    rel = rel.double()
    if dup is None or dup_penalty == 0:
        return rel
    return rel - dup_penalty * dup.double()


def discounts(n: int, device=None) -> torch.Tensor:
    """1 / log2(j + 1) for ranks j = 1..n."""
    return 1.0 / torch.log2(torch.arange(2, n + 2, dtype=torch.float64, device=device))


def rank_rewards(rel: torch.Tensor, kind: str = "exp_inf") -> torch.Tensor:
    """Per-rank rewards (B, N) from per-rank gains (B, N): relevance, or `gains` with a repeat penalty.

    exp_inf: r_k = g_k.  log (causal DCG@k:N): r_k = Σ_{j≥k} g_j / log2(j + 1)."""
    rel = rel.double()
    if kind == "exp_inf":
        return rel
    if kind == "log":
        gains = rel * discounts(rel.shape[1], rel.device)
        return gains.flip(1).cumsum(1).flip(1)
    raise ValueError(f"unknown reward '{kind}': choose one of {', '.join(REWARDS)}")


def sequence_rewards(rel: torch.Tensor) -> torch.Tensor:
    """DCG@N of each list (B,): Σ_j g_j / log2(j + 1), GRPO's and GSPO's one reward per list."""
    return (rel.double() * discounts(rel.shape[1], rel.device)).sum(dim=1)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = ADV_EPS) -> torch.Tensor:
    """(r − mean) / (std + eps) over the G samples of each prompt, separately for every trailing
    column (rank); std is the unbiased sample std, as in GRPO. Shape in = shape out: (B,) or (B, N)."""
    g = rewards.reshape(-1, group_size, *rewards.shape[1:])
    adv = (g - g.mean(dim=1, keepdim=True)) / (g.std(dim=1, keepdim=True) + eps)
    return adv.reshape(rewards.shape)


def zero_std_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Share of groups (and of group × rank cells for (B, N) rewards) whose G rewards are all equal:
    they give no learning signal."""
    g = rewards.reshape(-1, group_size, *rewards.shape[1:])
    return float((g.amax(dim=1) == g.amin(dim=1)).double().mean())


def segment_mean(values: torch.Tensor, seg: torch.Tensor, n_segments: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values`` (B, T) over each segment id 0..n_segments−1: means (B, S) and token counts (B, S).
    Segments without tokens get mean 0."""
    sums = torch.zeros(values.shape[0], n_segments, dtype=values.dtype, device=values.device)
    sums = sums.scatter_add(1, seg, values)
    counts = torch.zeros_like(sums).scatter_add(1, seg, torch.ones_like(values))
    return sums / counts.clamp(min=1), counts


def shaping_advantages(seg: torch.Tensor, n_items: int, shaping: Shaping) -> torch.Tensor:
    """Per-token shaping (B, T): ``overflow`` on every overflow token; the EOS token gets ``exact_eos``
    after exactly N items and no overflow, ``overflow`` after overflow, ``early_eos`` after fewer items."""
    n = items_emitted(seg, n_items).unsqueeze(1)
    spill = (seg == n_items + 1).any(dim=1, keepdim=True)
    eos = torch.where(n == n_items, shaping.exact_eos, shaping.early_eos)
    eos = torch.where(spill, shaping.overflow, eos)
    out = torch.where(seg == n_items + 2, eos, 0.0)
    return torch.where(seg == n_items + 1, shaping.overflow, out).double()


def segment_shaping(
    seg: torch.Tensor, n_items: int, shaping: Shaping, lines: torch.Tensor | None = None
) -> torch.Tensor:
    """Rank-GRPO's shaping advantages of the overflow and EOS segments (B, 2): overflow × units
    (``lines`` past the N-th for ``weight = "item"``, overflow tokens for ``"token"``), and the EOS
    token's value from `shaping_advantages`."""
    tok = shaping_advantages(seg, n_items, shaping)
    is_over = seg == n_items + 1
    if shaping.weight == "token":
        units = is_over.sum(dim=1)
    else:
        if lines is None:
            raise ValueError("item-weighted shaping needs the overflow line counts (`overflow_lines`)")
        units = torch.where(is_over.any(dim=1), lines.clamp(min=1), 0)
    eos = (tok * (seg == n_items + 2)).sum(dim=1)
    return torch.stack([shaping.overflow * units.double(), eos], dim=1)


def clipped_objective(ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float) -> torch.Tensor:
    """PPO's pessimistic objective min(w A, clip(w, 1 − ε_low, 1 + ε_high) A), elementwise."""
    return torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)


def clipped(ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float) -> torch.Tensor:
    """Where the clip is active (the gradient is cut): w > 1 + ε_high with A > 0, or w < 1 − ε_low with A < 0."""
    return ((ratio > 1 + eps_high) & (adv > 0)) | ((ratio < 1 - eps_low) & (adv < 0))


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π_θ ‖ π_ref) estimate (k3): e^{ref − logp} − (ref − logp) − 1, always ≥ 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def masked_sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's real tokens, then over sequences (scalar)."""
    m = mask.to(values.dtype)
    return ((values * m).sum(1) / m.sum(1).clamp(min=1)).mean()


@dataclass
class LossParts:
    loss: torch.Tensor  # minimised: −objective + β·KL
    objective: torch.Tensor
    kl: torch.Tensor
    clip_fraction: torch.Tensor  # of the ratios (items, tokens or sequences) that were clipped


def rank_grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    seg: torch.Tensor,
    rank_adv: torch.Tensor,
    n_items: int,
    *,
    eps_low: float = 0.06,
    eps_high: float = 0.08,
    shaping: Shaping | None = None,
    overflow_lines: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
) -> LossParts:
    """Rank-GRPO: one ratio and one advantage per item (segment), averaged over B·N ranks.

    The overflow and EOS segments take their shaping advantages (`segment_shaping`; ``overflow_lines``
    from `overflow_lines` for item weighting), so length shaping goes through the same clipped ratio.
    """
    mask = seg > 0
    n_seg = n_items + 3
    log_ratio, counts = segment_mean((logp - old_logp) * mask, seg, n_seg)
    adv = torch.zeros_like(log_ratio, dtype=torch.float64)
    adv[:, 1 : n_items + 1] = rank_adv
    if shaping is not None:
        adv[:, n_items + 1 :] = segment_shaping(seg, n_items, shaping, overflow_lines)
    present = counts[:, 1:] > 0
    ratio = torch.exp(log_ratio[:, 1:])
    adv = adv[:, 1:].to(ratio.dtype)
    obj = clipped_objective(ratio, adv, eps_low, eps_high) * present
    objective = obj.sum() / (seg.shape[0] * n_items)
    return _finish(objective, logp, ref_logp, mask, beta, clipped(ratio, adv, eps_low, eps_high)[present])


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    seg: torch.Tensor,
    seq_adv: torch.Tensor,
    n_items: int,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    shaping: Shaping | None = None,
    overflow_lines: torch.Tensor | None = None,  # unused: token-level shaping is per token
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
) -> LossParts:
    """Token-level GRPO: the list's advantage on every token, token ratios exp(logp − old), mean over
    each completion's tokens, then over completions."""
    mask = seg > 0
    adv = seq_adv.double().unsqueeze(1).expand_as(logp)
    if shaping is not None:
        adv = adv + shaping_advantages(seg, n_items, shaping)
    ratio = torch.exp(logp - old_logp)
    adv = adv.to(ratio.dtype)
    objective = masked_sequence_mean(clipped_objective(ratio, adv, eps_low, eps_high), mask)
    return _finish(objective, logp, ref_logp, mask, beta, clipped(ratio, adv, eps_low, eps_high)[mask])


def gspo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    seg: torch.Tensor,
    seq_adv: torch.Tensor,
    n_items: int,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    shaping: Shaping | None = None,
    overflow_lines: torch.Tensor | None = None,  # unused: the list's shaping is its per-token mean
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
) -> LossParts:
    """Sequence-level GSPO: one length-normalised ratio s_i = exp(mean_t [logp − old]) per list.
    Token shaping enters as its mean over the list's tokens, added to the list's advantage."""
    mask = seg > 0
    m = mask.to(logp.dtype)
    ratio = torch.exp(((logp - old_logp) * m).sum(1) / m.sum(1).clamp(min=1))
    adv = seq_adv.double()
    if shaping is not None:
        tok = shaping_advantages(seg, n_items, shaping)
        adv = adv + (tok * m).sum(1) / m.sum(1).clamp(min=1)
    adv = adv.to(ratio.dtype)
    objective = clipped_objective(ratio, adv, eps_low, eps_high).mean()
    return _finish(objective, logp, ref_logp, mask, beta, clipped(ratio, adv, eps_low, eps_high))


def _finish(objective, logp, ref_logp, mask, beta, clip_flags) -> LossParts:
    kl = masked_sequence_mean(k3_kl(logp, ref_logp), mask) if ref_logp is not None else logp.new_zeros(())
    frac = clip_flags.double().mean() if clip_flags.numel() else logp.new_zeros(())
    return LossParts(-objective + beta * kl, objective.detach(), kl.detach(), frac)


DEFAULT_CLIP = {"rank": (0.06, 0.08), "token": (0.2, 0.2), "sequence": (3e-4, 4e-4)}
LOSSES = {"rank": rank_grpo_loss, "token": grpo_loss, "sequence": gspo_loss}
