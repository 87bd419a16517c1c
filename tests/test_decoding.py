"""The plain constrained decoding loop against transformers' generate with the catalog processor."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList

from convrec.data import load_split, open_catalog
from convrec.decoding import loop
from convrec.decoding.constrained import CatalogConstraints
from convrec.decoding.generate import encode_prompts, left_pad
from convrec.decoding.loop import _top_p, decode_constrained
from convrec.models.load import load_model, load_tokenizer, stop_token_ids
from convrec.models.tiny import init_model
from convrec.train.rollout import _trim


@pytest.fixture(scope="module")
def item_model(sft_world, tmp_path_factory):
    """A random tiny student with one token per catalog line (the small demo's kind)."""
    out = tmp_path_factory.mktemp("item_model")
    init_model(sft_world / "data", out, item_tokens=True)
    return load_tokenizer(out), load_model(out)


@pytest.fixture(scope="module")
def bpe_model(sft_world):
    path = sft_world / "sft" / "best"
    return load_tokenizer(path), load_model(path)


def _batch(world, tok, constraints, k: int):
    msgs = load_split(world / "data", "val")["messages"].to_list()[:3]
    ids, attn = left_pad(encode_prompts(tok, msgs, k, 512), tok.pad_token_id)
    specs = [constraints.row_constraint(k), constraints.row_constraint(k, [0, 1, 2]), constraints.row_constraint(k)]
    return ids, attn, specs


def _generate_greedy(model, tok, constraints, ids, attn, specs, budget):
    proc = constraints.processor(specs)
    out = model.generate(
        input_ids=ids, attention_mask=attn, do_sample=False, max_new_tokens=budget, pad_token_id=tok.pad_token_id,
        eos_token_id=stop_token_ids(tok, model), logits_processor=LogitsProcessorList([proc]),
    )  # fmt: skip
    stops = stop_token_ids(tok, model)
    rows = [_trim(row, stops, tok.pad_token_id) for row in out[:, ids.shape[1] :].tolist()]
    proc.finish(out)
    return rows, [proc.complete(r) for r in range(len(specs))]


@pytest.mark.parametrize("kind", ["item", "bpe"])
@pytest.mark.parametrize("budget", [None, 7])
def test_greedy_lists_equal_generate_with_the_catalog_processor(sft_world, item_model, bpe_model, kind, budget):
    """Same tokens, same completeness, for item-token and BPE students, with exclusions and with a
    budget that cuts lists mid-line."""
    tok, model = item_model if kind == "item" else bpe_model
    constraints = CatalogConstraints(tok, open_catalog(sft_world / "data"))
    ids, attn, specs = _batch(sft_world, tok, constraints, 5)
    budget = budget or constraints.max_new_tokens(5)
    expected, complete = _generate_greedy(model, tok, constraints, ids, attn, specs, budget)
    got = decode_constrained(
        model, ids, attn, constraints.states(specs), max_new_tokens=budget, pad_id=tok.pad_token_id,
        stop_ids=stop_token_ids(tok, model), greedy=True,
    )  # fmt: skip
    assert got.tokens == expected
    assert got.complete == complete
    if budget > 7:
        assert all(complete) and all(len(row) >= 5 for row in got.tokens)
    else:
        assert all(len(row) == 7 for row in got.tokens) and not all(complete)


def test_forced_tokens_share_a_forward_with_the_sampled_one(sft_world, item_model):
    """With one token per line the newline after each item is forced on every row: k items take
    k + 1 forwards (prompt, then one per sampled item), not the 2k of token-by-token decoding."""
    tok, model = item_model
    constraints = CatalogConstraints(tok, open_catalog(sft_world / "data"))
    ids, attn, specs = _batch(sft_world, tok, constraints, 6)
    calls = []
    handle = model.get_decoder().register_forward_hook(lambda *_: calls.append(1))
    try:
        got = decode_constrained(
            model, ids, attn, constraints.states(specs), max_new_tokens=constraints.max_new_tokens(6),
            pad_id=tok.pad_token_id, stop_ids=stop_token_ids(tok, model),
        )  # fmt: skip
    finally:
        handle.remove()
    assert [len(row) for row in got.tokens] == [12, 12, 12]  # 5 × (item, newline) + item, stop
    assert len(calls) == 6
    for spec, row in zip(specs, got.tokens, strict=True):
        constraints.replay(spec, row)  # every token inside the mask it was drawn under


def test_sampling_follows_the_masked_distribution_at_the_temperature(sft_world, bpe_model):
    """The first token's empirical frequencies over 3,000 draws match softmax(masked logits / T)."""
    tok, model = bpe_model
    constraints = CatalogConstraints(tok, open_catalog(sft_world / "data"))
    ids, attn, _ = _batch(sft_world, tok, constraints, 1)
    ids, attn, n = ids[:1], attn[:1], 3000
    spec = constraints.row_constraint(1, [0, 1])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits[0, -1]
    allowed = constraints.states([spec])[0].next_ids(torch.device("cpu"))
    expected = torch.zeros_like(logits)
    expected[allowed] = torch.softmax(logits[allowed] / 1.5, -1)
    torch.manual_seed(0)
    got = decode_constrained(
        model, ids.expand(n, -1), attn.expand(n, -1), constraints.states([spec] * n), max_new_tokens=4,
        pad_id=tok.pad_token_id, stop_ids=stop_token_ids(tok, model), temperature=1.5,
    )  # fmt: skip
    first = torch.bincount(torch.tensor([row[0] for row in got.tokens]), minlength=len(expected)).float() / n
    assert set(first.nonzero().squeeze(-1).tolist()) <= set(allowed.tolist())

    def worst_z(p: torch.Tensor) -> float:  # the largest per-token binomial z-score of the frequencies
        return float(((first - p).abs() / ((p * (1 - p) / n).sqrt() + 1e-3 / n)).max())

    assert worst_z(expected) < 4.5
    at_one = torch.zeros_like(logits)
    at_one[allowed] = torch.softmax(logits[allowed], -1)
    assert worst_z(at_one) > 6  # the test tells T = 1.5 from T = 1


def test_top_p_keeps_the_smallest_set_reaching_p():
    z = torch.log(torch.tensor([[0.5, 0.1, 0.3, 0.1], [0.9, 0.05, 0.03, 0.02]]))
    kept = _top_p(z, 0.75) > float("-inf")
    assert kept.tolist() == [[True, False, True, False], [True, False, False, False]]


def _old_inverse_cdf(z: torch.Tensor) -> torch.Tensor:
    """The sampler before issue 30 item 9: inverse CDF over softmax(z).cumsum()."""
    cdf = torch.softmax(z, dim=-1).cumsum(-1)
    u = torch.rand(cdf.shape[0], 1) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=cdf.shape[1] - 1)


@pytest.mark.parametrize("sampler", [loop.sample, pytest.param(_old_inverse_cdf, marks=pytest.mark.xfail(strict=True))])
def test_sampling_never_picks_a_masked_id_under_an_inexact_scan(monkeypatch, sampler):
    """CUDA's parallel scan can step the cumulative sum up across a zero-probability entry; emulated
    here with a cumsum that adds 0.05 at each masked entry. The inverse-CDF draw then lands on masked
    ids (the old sampler: xfail, strict); `loop.sample` never does."""
    real = torch.Tensor.cumsum

    def inexact(self, dim, *a, **k):
        out = real(self, dim, *a, **k)
        return out + real((self == 0).to(out.dtype) * 0.05, dim)

    monkeypatch.setattr(torch.Tensor, "cumsum", inexact)
    z = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]]).expand(4000, -1)
    torch.manual_seed(0)
    picked = sampler(z)
    assert set(picked.unique().tolist()) <= {0, 2}
