"""What an RL run optimises on a real model: sampling temperature, stop tokens, token budget, processes."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LogitsProcessorList

from convrec.catalog import Catalog
from convrec.data import load_catalog, load_split, open_catalog
from convrec.decoding.constrained import CatalogConstraints
from convrec.decoding.generate import GenerationConfig, encode_prompts, generate_texts, left_pad, list_token_budget
from convrec.errors import ConvrecError
from convrec.models.load import load_model, load_tokenizer, stop_token_ids, turn_end_id
from convrec.train import rl_rewards
from convrec.train.logits import selected_logps
from convrec.train.rl import RLConfig, shared_prompts, token_logps
from convrec.train.rollout import HFEngine, SamplingConfig
from convrec.train.sft import SFTConfig
from convrec.train.sft import train as sft_train
from convrec.train.sft_data import encode
from tests.conftest import run_cli

RL_ARGS = [
    "--group-size", "2", "--prompts-per-step", "2", "--micro-batch-size", "2", "--n-items", "4",
    "--val-samples", "2", "--lr", "1e-3", "--seed", "3", "--eval-every", "1",
]  # fmt: skip


@pytest.fixture
def policy(sft_world):
    path = sft_world / "sft" / "best"
    return sft_world, load_tokenizer(path), load_model(path)


def _prompts(world, tok, n=2):
    msgs = load_split(world / "data", "val")["messages"].to_list()[:n]
    return encode_prompts(tok, msgs, 4, 512)


def _sample(model, tok, prompts, temperature: float, stops: list[int], **generate_kwargs):
    """Sampled completions, their mask (up to and including a stop token) and the log-probability of
    each token under the scores generate sampled it from (after its temperature warper and processors)."""
    ids, attn = left_pad(prompts, tok.pad_token_id)
    torch.manual_seed(0)
    out = model.generate(
        input_ids=ids, attention_mask=attn, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
        pad_token_id=tok.pad_token_id, output_scores=True, return_dict_in_generate=True, **generate_kwargs,
    )  # fmt: skip
    comp = out.sequences[:, ids.shape[1] :]
    sampled = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1).gather(-1, comp.unsqueeze(-1))
    is_stop = torch.isin(comp, torch.tensor(stops))
    ended = is_stop.long().cumsum(1)
    mask = (ended == 0) | ((ended == 1) & is_stop)
    expected = torch.where(mask, sampled.squeeze(-1), 0.0)  # after a constrained stop the mask leaves pad at −inf
    return comp, mask, expected, is_stop


def test_shared_prompt_logps_and_gradients_equal_full_sequences(policy):
    """token_logps runs each group's prompt once and continues its completions from the cache; the
    log-probs, entropies and parameter gradients equal scoring every full sequence on its own."""
    world, tok, model = policy
    prompts = list({tuple(p): p for p in _prompts(world, tok, 8)}.values())[:3]
    assert len(prompts) == 3 and len({len(p) for p in prompts}) > 1  # distinct, and left padding is exercised
    rows = [prompts[0]] * 2 + [prompts[1]] * 3 + [prompts[2]] + [prompts[0]]  # the last run repeats an earlier prompt
    g = torch.Generator().manual_seed(0)
    t = 9
    comp = torch.randint(3, len(tok), (len(rows), t), generator=g)
    mask = torch.arange(t)[None] < torch.tensor([9, 4, 7, 1, 9, 6, 3])[:, None]
    comp = torch.where(mask, comp, tok.pad_token_id)

    model.zero_grad()
    logp, ent = token_logps(model, rows, comp, mask, tok.pad_token_id, 1.3)
    (logp * torch.linspace(0.5, 2, t)).sum().backward()  # a weighting that reaches every position
    shared = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    prompt, pmask = left_pad(rows, tok.pad_token_id)
    ids, attn = torch.cat([prompt, comp], 1), torch.cat([pmask, mask.long()], 1)
    score = torch.cat([torch.zeros_like(pmask, dtype=torch.bool), mask], 1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    full, full_ent = selected_logps(model, ids, attn, score, position_ids=pos, temperature=1.3, entropy=True)
    (full[:, -t:] * torch.linspace(0.5, 2, t)).sum().backward()

    assert shared_prompts(rows)[1].tolist() == [0, 0, 1, 1, 1, 2, 3]
    assert torch.allclose(logp, full[:, -t:], atol=1e-5) and bool((logp[~mask] == 0).all())
    assert torch.allclose(ent, full_ent[:, -t:], atol=1e-4)
    for a, p in zip(shared, model.parameters(), strict=True):
        assert torch.allclose(a, p.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("temperature", [0.5, 1.3])
def test_logps_are_those_of_the_distribution_sampled(policy, temperature):
    """token_logps at T equals log softmax(logits / T) that generate sampled each token from."""
    world, tok, model = policy
    prompts = _prompts(world, tok)
    comp, mask, expected, _ = _sample(model, tok, prompts, temperature, [tok.eos_token_id], max_new_tokens=12)
    with torch.no_grad():
        at_t = token_logps(model, prompts, comp, mask, tok.pad_token_id, temperature)[0]
        at_1 = token_logps(model, prompts, comp, mask, tok.pad_token_id)[0]
    assert int(mask.sum()) >= 4
    assert torch.allclose(at_t, expected, atol=1e-4)
    assert not torch.allclose(at_1, expected, atol=1e-2)  # scoring at T = 1 is another distribution


def test_constrained_logps_are_those_of_the_masked_distribution_sampled(policy):
    """With the replayed catalog masks, token_logps is log softmax of the masked scores generate sampled
    from (π renormalised over the allowed tokens), not the unmasked policy's log-probability."""
    world, tok, model = policy
    constraints = CatalogConstraints(tok, open_catalog(world / "data"))
    prompts = _prompts(world, tok)
    rows = [constraints.row_constraint(4), constraints.row_constraint(4, [0, 1, 2])]
    stops = stop_token_ids(tok, model)
    comp, mask, expected, is_stop = _sample(
        model, tok, prompts, 1.3, stops, max_new_tokens=constraints.max_new_tokens(4), eos_token_id=stops,
        logits_processor=LogitsProcessorList([constraints.processor(rows)]),
    )  # fmt: skip
    allowed = [constraints.replay(r, c[m].tolist()) for r, c, m in zip(rows, comp, mask, strict=True)]
    with torch.no_grad():
        masked = token_logps(model, prompts, comp, mask, tok.pad_token_id, 1.3, allowed=allowed)[0]
        plain = token_logps(model, prompts, comp, mask, tok.pad_token_id, 1.3)[0]
    assert bool(is_stop.any(1).all())  # both lists ended inside the budget
    assert torch.allclose(masked, expected, atol=1e-4)
    assert bool((plain[mask] <= masked[mask] + 1e-6).all()) and not torch.allclose(plain, expected, atol=1e-2)
    # a token outside the mask is refused, not scored
    bad = comp[1][mask[1]].tolist()
    first = set(allowed[1][0].tolist())
    bad[0] = next(t for t in range(len(tok)) if t not in first)
    with pytest.raises(ConvrecError, match="outside the catalog constraint"):
        constraints.replay(rows[1], bad)


def test_first_on_policy_pass_has_ratio_one_at_low_temperature(sft_world, tmp_path):
    """T = 0.5, mu = 1: old and new log-probs come from one distribution, so nothing is clipped."""
    run = tmp_path / "t05"
    base = ["--model", sft_world / "sft" / "best", "--data", sft_world / "data", "--out", run, "--max-steps", "1"]
    proc = run_cli("rl", *base, *RL_ARGS, "--temperature", "0.5", "--max-new-tokens", "40", "--beta", "0")
    assert proc.returncode == 0, proc.stderr
    step = next(json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln)
    assert step["clip_fraction"] == 0.0


def _force_token(model, token: int):
    """A hook that makes ``token`` the model's only likely next token (the model 'stops' with it)."""

    def hook(_module, _inputs, logits):
        bias = torch.zeros(logits.shape[-1], dtype=logits.dtype)
        bias[token] = 1e4
        return logits + bias

    return model.get_output_embeddings().register_forward_hook(hook)


def test_two_stop_tokens_end_rollouts_generation_and_rewards(policy):
    world, tok, model = policy
    second = tok.convert_tokens_to_ids("<|user|>")  # a chat model's other end-of-turn token
    model.generation_config.eos_token_id = [tok.eos_token_id, second]
    stops = stop_token_ids(tok, model)
    assert stops == [tok.eos_token_id, second]
    prompts = _prompts(world, tok)
    handle = _force_token(model, second)
    try:
        cfg = SamplingConfig(group_size=2, max_new_tokens=30, prompts_per_batch=2, stop_ids=tuple(stops))
        completions = HFEngine(model, tok).generate(prompts, cfg)
        assert completions == [[second]] * 4  # stopped on the sampled stop token; nothing appended
        texts = generate_texts(model, tok, prompts, GenerationConfig(n_items=4, max_new_tokens=30))
        assert texts == ["", ""]  # stopped at once, not after 30 tokens of <|user|>
    finally:
        handle.remove()
    # a list ended by the second stop token is a finished, well-formed list
    catalog = Catalog(load_catalog(world / "data"))
    lines = [catalog.label(r) for r in range(4)]
    ids = tok("\n".join(lines) + "\n", add_special_tokens=False)["input_ids"]
    gt = [[(catalog.titles[0], catalog.years[0])]]
    scored = rl_rewards.score(tok, [ids + [second]], gt, [[]], catalog, 4, stops)
    assert scored.seg[0, -1] == 6 and scored.format_valid == 1.0 and scored.clipped == 0.0
    assert scored.rel[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    unscored = rl_rewards.score(tok, [ids + [second]], gt, [[]], catalog, 4)  # EOS only: no stop seen
    assert unscored.format_valid == 0.0 and unscored.clipped == 1.0


def test_sft_targets_end_with_the_templates_turn_end(policy):
    """A chat template whose replies end with another token: the SFT target ends with that token."""
    world, tok, _ = policy
    tok.chat_template = tok.chat_template.replace("{{ eos_token }}", "<|system|>")
    end = tok.convert_tokens_to_ids("<|system|>")
    assert turn_end_id(tok) == end != tok.eos_token_id
    df = load_split(world / "data", "train").head(2)
    enc = encode(tok, df, [[("Dune", 2021)], [("Elf", 2003)]], 4, 512)
    assert all(c[-1] == end and tok.eos_token_id not in c for c in enc.completions)


def test_list_token_budget_follows_the_catalog_under_the_tokenizer(policy):
    world, tok, _ = policy
    catalog = Catalog(load_catalog(world / "data"))
    lengths = [len(tok(f"{catalog.label(r)}\n", add_special_tokens=False)["input_ids"]) for r in range(len(catalog))]
    p99 = torch.quantile(torch.tensor(lengths, dtype=torch.float64), 0.99).item()
    assert list_token_budget(tok, catalog, 20) == int(-(-p99 * 20 // 1)) + 8
    assert list_token_budget(tok, catalog, 5) < list_token_budget(tok, catalog, 20)


def test_clipped_rollouts_are_logged_and_warned_once(sft_world, tmp_path):
    run = tmp_path / "short"
    base = ["--model", sft_world / "sft" / "best", "--data", sft_world / "data", "--out", run, "--max-steps", "2"]
    proc = run_cli("rl", *base, *RL_ARGS, "--max-new-tokens", "6", "--eval-every", "2")
    assert proc.returncode == 0, proc.stderr
    steps = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert [s["clipped_ratio"] for s in steps] == [1.0, 1.0]  # 6 tokens never hold 4 items and a stop
    assert proc.stdout.count("hit the 6-token limit") == 1
    default = RLConfig(model="x", data="d", out="o")
    assert default.max_new_tokens is None  # derived from the catalog (list_token_budget) at run time


def test_several_processes_without_deepspeed_are_refused(sft_world, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConvrecError, match="several processes need --deepspeed"):
        RLConfig(model="x", data="d", out="o").check()
    with pytest.raises(ConvrecError, match="several processes need --deepspeed"):
        sft_train(SFTConfig(data=str(sft_world / "data"), model=str(sft_world / "model"), out=str(tmp_path / "s")))
    assert not (tmp_path / "s").exists()
