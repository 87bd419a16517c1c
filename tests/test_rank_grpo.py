"""The Rank-GRPO maths against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from convrec.train import rank_grpo as rg

T, F = True, False


def test_segment_ranks_newline_belongs_to_item_overflow_eos_padding():
    # tokens: A A \n B \n C \n <eos> <pad>, N = 2
    breaks = torch.tensor([[F, F, T, F, T, F, T, F, F]])
    eos = torch.tensor([[F, F, F, F, F, F, F, T, F]])
    mask = torch.tensor([[T] * 8 + [F]])
    seg = rg.segment_ranks(breaks, eos, mask, n_items=2)
    assert seg.tolist() == [[1, 1, 1, 2, 2, 3, 3, 4, 0]]
    assert rg.items_emitted(seg, 2).tolist() == [2]


def test_items_emitted_counts_nonempty_items_only():
    seg = rg.segment_ranks(
        torch.tensor([[F, T, F], [F, F, F]]),
        torch.tensor([[F, F, T], [F, F, F]]),
        torch.tensor([[T, T, T], [F, F, F]]),
        2,
    )
    assert seg.tolist() == [[1, 1, 4], [0, 0, 0]]
    assert rg.items_emitted(seg, 2).tolist() == [1, 0]


def test_rewards_exp_inf_and_causal_log():
    rel = torch.tensor([[1.0, 0.0, 1.0]])
    assert rg.rank_rewards(rel, "exp_inf").tolist() == [[1.0, 0.0, 1.0]]
    # r_1 = 1/log2(2) + 1/log2(4) = 1.5; r_2 = r_3 = 1/log2(4) = 0.5: a rank never gets earlier credit
    assert rg.rank_rewards(rel, "log")[0].tolist() == pytest.approx([1.5, 0.5, 0.5])
    assert rg.sequence_rewards(rel).tolist() == pytest.approx([1.5])
    with pytest.raises(ValueError, match="unknown reward"):
        rg.rank_rewards(rel, "dcg")


def test_group_advantages_per_rank():
    r = torch.tensor([[3.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # one group of G = 3, N = 2
    adv = rg.group_advantages(r, 3)
    std = math.sqrt((4 + 1 + 1) / 2)  # unbiased
    assert adv[:, 0].tolist() == pytest.approx([2 / (std + 1e-4), -1 / (std + 1e-4), -1 / (std + 1e-4)])
    assert adv[:, 1].tolist() == [0.0, 0.0, 0.0]  # equal rewards: no signal, no NaN
    assert rg.zero_std_fraction(r, 3) == 0.5
    seq = torch.tensor([1.0, 0.0, 1.0, 1.0])  # two groups of 2
    assert rg.group_advantages(seq, 2).tolist() == pytest.approx([0.5 / (math.sqrt(0.5) + 1e-4), -0.70700680, 0, 0])
    assert rg.zero_std_fraction(seq, 2) == 0.5


def test_k3_kl():
    logp, ref = torch.log(torch.tensor([0.5, 0.3])), torch.log(torch.tensor([0.25, 0.3]))
    assert rg.k3_kl(logp, ref).tolist() == pytest.approx([0.5 + math.log(2) - 1, 0.0], abs=1e-7)


def test_shaping_advantages():
    # N = 2: (a) 2 items, 2 overflow tokens, EOS: the EOS after overflow is overflow too (-0.1), not +0.1;
    # (b) 1 item then EOS: early; (c) exactly 2 items then EOS: the only +0.1
    seg = torch.tensor([[1, 2, 3, 3, 4], [1, 1, 4, 0, 0], [1, 2, 2, 4, 0]])
    shaped = rg.shaping_advantages(seg, 2, rg.Shaping())
    assert shaped[0].tolist() == pytest.approx([0, 0, -0.1, -0.1, -0.1])
    assert shaped[1].tolist() == pytest.approx([0, 0, -0.1, 0, 0])
    assert shaped[2].tolist() == pytest.approx([0, 0, 0, 0.1, 0])
    with pytest.raises(ValueError, match="unknown shaping weight"):
        rg.Shaping(weight="sequence")


def _list_of(n_lines: int, n_items: int, tokens_per_line: int = 3):
    """breaks / seg of a list of ``n_lines`` lines of 3 tokens (the last holds the newline), then EOS."""
    breaks = ([F] * (tokens_per_line - 1) + [T]) * n_lines + [F]
    eos = [F] * (tokens_per_line * n_lines) + [T]
    b, e = torch.tensor([breaks]), torch.tensor([eos])
    return b, rg.segment_ranks(b, e, torch.ones_like(b), n_items)


def test_overflow_lines_counts_lines_past_the_nth():
    for n_lines, expected in ((25, 5), (20, 0), (19, 0), (21, 1)):
        breaks, seg = _list_of(n_lines, 20)
        assert rg.overflow_lines(breaks, seg, 20).tolist() == [expected]
    # a last overflow line without its newline still counts
    breaks = torch.tensor([[F, T, F, T, F, F]])
    seg = rg.segment_ranks(breaks, torch.zeros_like(breaks), torch.ones_like(breaks), 1)
    assert seg.tolist() == [[1, 1, 2, 2, 2, 2]]
    assert rg.overflow_lines(breaks, seg, 1).tolist() == [2]


@pytest.mark.parametrize(
    ("n_lines", "weight", "cost"),
    [
        (25, "item", 5 * 0.1 + 0.1),  # 5 lines past the 20th, then an EOS that is overflow too
        (25, "token", 15 * 0.1 + 0.1),  # 5 × 3 overflow tokens, then the EOS
        (19, "item", 0.1),  # early EOS
        (19, "token", 0.1),
        (20, "item", -0.1),  # exactly 20 then EOS: a bonus
    ],
)
def test_what_a_long_and_a_short_list_cost(n_lines, weight, cost):
    """On-policy (w = 1) with zero rank advantages the objective is the shaping alone, over B·N = 20."""
    breaks, seg = _list_of(n_lines, 20)
    logp = torch.zeros(seg.shape, dtype=torch.float64)
    parts = rg.rank_grpo_loss(
        logp, logp, seg, torch.zeros(1, 20, dtype=torch.float64), 20,
        shaping=rg.Shaping(weight=weight), overflow_lines=rg.overflow_lines(breaks, seg, 20),
    )  # fmt: skip
    assert float(parts.objective) == pytest.approx(-cost / 20)


def test_item_weighting_needs_the_line_counts():
    _, seg = _list_of(25, 20)
    logp = torch.zeros(seg.shape)
    with pytest.raises(ValueError, match="overflow line counts"):
        rg.rank_grpo_loss(logp, logp, seg, torch.zeros(1, 20), 20, shaping=rg.Shaping())


def test_duplicate_penalty_enters_every_reward():
    rel = torch.tensor([[1.0, 0.0, 0.0]])
    dup = torch.tensor([[0.0, 1.0, 0.0]])  # rank 2 repeats rank 1
    assert rg.gains(rel, dup, 0.0).tolist() == [[1.0, 0.0, 0.0]]  # the paper's rule: a repeat is a miss
    g = rg.gains(rel, dup, 0.5)
    assert g.tolist() == [[1.0, -0.5, 0.0]]
    assert rg.rank_rewards(g, "exp_inf").tolist() == [[1.0, -0.5, 0.0]]
    # log: r_1 = 1 - 0.5/log2(3) = 0.68454, r_2 = -0.5/log2(3) = -0.31546, r_3 = 0
    assert rg.rank_rewards(g, "log")[0].tolist() == pytest.approx([0.684535, -0.315465, 0.0], abs=1e-6)
    assert rg.sequence_rewards(g).tolist() == pytest.approx([0.684535], abs=1e-6)


def _rank_case():
    # G = 2 samples of one prompt, N = 2.
    # Sample 0: item 1 (2 tokens), item 2, EOS; sample 1: item 1, item 2 (2 tokens), pad.
    seg = torch.tensor([[1, 1, 2, 4], [1, 2, 2, 0]])
    diff = torch.tensor([[0.1, 0.3, -0.2, 0.0], [0.0, 0.05, 0.05, 0.0]])
    old = torch.full((2, 4), -1.0)
    adv = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    return seg, old + diff, old, adv


def test_rank_grpo_loss_by_hand():
    seg, logp, old, adv = _rank_case()
    parts = rg.rank_grpo_loss(logp, old, seg, adv, 2, eps_low=0.06, eps_high=0.08)
    # sample 0: w1 = e^0.2 = 1.2214 clipped to 1.08 (A = 1); w2 = e^-0.2 = 0.8187 -> clip 0.94 * -1 = -0.94
    # sample 1: w1 = 1 -> -1; w2 = e^0.05 = 1.05127 (inside the clip) -> 1.05127; EOS has advantage 0
    expected = (1.08 - 0.94 - 1 + math.exp(0.05)) / (2 * 2)
    assert float(parts.objective) == pytest.approx(expected, rel=1e-6)
    assert float(parts.loss) == pytest.approx(-expected, rel=1e-6)
    assert float(parts.clip_fraction) == pytest.approx(2 / 5)  # 5 non-empty segments, 2 clipped
    shaped = rg.rank_grpo_loss(
        logp, old, seg, adv, 2, eps_low=0.06, eps_high=0.08, shaping=rg.Shaping(), overflow_lines=torch.zeros(2)
    )
    # sample 0 ends with EOS after exactly N items: +0.1 at ratio 1
    assert float(shaped.objective) == pytest.approx(expected + 0.1 / 4, rel=1e-6)


def test_kl_term_enters_the_loss():
    seg, logp, old, adv = _rank_case()
    ref = logp - 0.5
    parts = rg.rank_grpo_loss(logp, old, seg, adv, 2, ref_logp=ref, beta=0.1)
    kl = math.exp(-0.5) + 0.5 - 1
    assert float(parts.kl) == pytest.approx(kl, rel=1e-6)
    assert float(parts.loss) == pytest.approx(-float(parts.objective) + 0.1 * kl, rel=1e-6)


def test_on_policy_gradient_is_rank_advantage_weighted_rank_averaged_logprob_gradient():
    """mu = 1: w ≡ 1, and d loss / d logp_t = −A_{i,k} / (B · N · |item k|) for token t of item k."""
    torch.manual_seed(0)
    seg = torch.tensor([[1, 1, 1, 2, 3, 3, 0], [1, 2, 2, 2, 2, 3, 4]])  # N = 3
    adv = torch.randn(2, 3, dtype=torch.float64)
    logp = torch.randn(2, 7, dtype=torch.float64, requires_grad=True)
    parts = rg.rank_grpo_loss(logp, logp.detach(), seg, adv, 3)
    parts.loss.backward()
    sizes = {(b, k): int((seg[b] == k).sum()) for b in range(2) for k in range(1, 4)}
    expected = torch.zeros(2, 7, dtype=torch.float64)
    for b in range(2):
        for t in range(7):
            k = int(seg[b, t])
            if 1 <= k <= 3:
                expected[b, t] = -adv[b, k - 1] / (2 * 3 * sizes[b, k])
    assert torch.allclose(logp.grad, expected)
    assert float(parts.objective) == pytest.approx(float(adv.sum()) / 6)


def test_grpo_token_level_by_hand():
    seg = torch.tensor([[1, 2], [1, 2]])
    old = torch.zeros(2, 2)
    logp = torch.tensor([[0.1, 0.0], [0.0, -0.3]])
    parts = rg.grpo_loss(logp, old, seg, torch.tensor([1.0, -1.0]), 2, eps_low=0.2, eps_high=0.2)
    # sample 0 (A = 1): e^0.1 = 1.10517 and 1 -> mean 1.052585; sample 1 (A = -1): -1 and clip(0.7408) -> -0.8
    expected = ((math.exp(0.1) + 1) / 2 + (-1 - 0.8) / 2) / 2
    assert float(parts.objective) == pytest.approx(expected, rel=1e-6)
    assert float(parts.clip_fraction) == pytest.approx(1 / 4)


def test_gspo_sequence_level_by_hand():
    seg = torch.tensor([[1, 2], [1, 2]])
    old = torch.zeros(2, 2)
    logp = torch.tensor([[0.1, 0.0], [0.0, -0.3]])
    parts = rg.gspo_loss(logp, old, seg, torch.tensor([1.0, -1.0]), 2, eps_low=3e-4, eps_high=4e-4)
    # s_0 = e^0.05 clipped to 1.0004 (A = 1); s_1 = e^-0.15 = 0.8607 -> clip 0.9997 * -1
    assert float(parts.objective) == pytest.approx((1.0004 - 0.9997) / 2, abs=1e-7)  # float32
    assert float(parts.clip_fraction) == 1.0
