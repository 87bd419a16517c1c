"""`convrec serve` and catalog-constrained decoding.

The server tests start the real CLI on a free loopback port, with an untrained tiny model (the
hardest case for the constraint: left alone it writes anything) and the synthetic world, and
talk to it with the official `openai` client, a plain HTTP client and headless Chromium.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pytest
import torch

from convrec.catalog import Catalog
from convrec.data import item_lists, load_catalog, load_split
from convrec.decoding.constrained import CatalogConstraints
from convrec.decoding.generate import GenerationConfig, encode_prompts, generate_predictions, generate_texts
from convrec.decoding.mentions import MentionFinder
from convrec.evaluation.evaluate import EvalConfig, evaluate
from convrec.evaluation.metrics import SEEN, judge_list
from convrec.listfmt import format_list, parse_list
from tests.conftest import assert_user_error, free_port, run_cli, start_server, stop_server

try:  # openai's own HTTP client (httpx' successor, same API); older installs have httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

openai = pytest.importorskip("openai")

KEY = "test-key-123"
KEY_ENV = "CONVREC_TEST_SERVE_KEY"


# --- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path]:
    """The synthetic world and an untrained tiny model built on it."""
    root = tmp_path_factory.mktemp("serve")
    data, model = root / "data", root / "model"
    for args in (("data", "synth", "--out", data, "--seed", "0"), ("model", "init", "--data", data, "--out", model)):
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr
    return data, model


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """In-process decoding on one thread: on a busy 2-core machine more threads are many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def catalog(world) -> Catalog:
    return Catalog(load_catalog(world[0]))


@pytest.fixture(scope="module")
def lm(world):
    from convrec.models.load import load_model, load_tokenizer

    return load_tokenizer(world[1]), load_model(world[1])


@pytest.fixture(scope="module")
def server(world):
    data, model = world
    args = ["--model", model, "--data", data, "--api-key-env", KEY_ENV, "--max-batch", "32", "--max-k", "50"]
    proc, url = start_server([*args, "--threads", "1"], {**os.environ, KEY_ENV: KEY}, timeout=180)
    yield url
    out = stop_server(proc)
    assert "Traceback" not in out, out


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


def auth() -> dict:
    return {"Authorization": f"Bearer {KEY}"}


def conversation(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# --- constrained decoding, in process ---------------------------------------------------------
def test_trie_paths_are_the_tokens_of_a_written_list(lm, catalog):
    tok, _ = lm
    cc = CatalogConstraints(tok, catalog)
    rows = [0, 5, 17]
    text = format_list([(catalog.titles[r], catalog.years[r]) for r in rows]) + tok.eos_token
    ids = tok(text, add_special_tokens=False)["input_ids"]
    node, items = 0, []
    for t in ids:  # walking the trie with the tokens of a training target visits exactly its items
        node = cc.trie.children[node][t]
        if node in cc.trie.leaf:
            items.append(cc.trie.leaf[node][0])
            node = 0
    assert [cc.row_of_item[i] for i in items] == rows


def merging_tokenizer(labels: list[str]):
    """A Qwen-style pre-tokenizer: ")" and the newline after it become one token ")\\n"."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    qwen = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(qwen), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    texts = ["\n".join(labels[i : i + 5]) for i in range(0, len(labels), 5)]
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def test_trie_follows_a_tokenizer_that_merges_the_newline(catalog):
    labels = [catalog.label(r) for r in range(len(catalog))]
    tok = merging_tokenizer(labels)
    target = tok(labels[0] + "\n", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(target)[-1] == ")\u010a"  # the merge this test is about
    cc = CatalogConstraints(tok, catalog)
    rows = [7, 0, 42]
    ids = tok(format_list([(catalog.titles[r], catalog.years[r]) for r in rows]) + "<eos>", add_special_tokens=False)
    proc = cc.processor([cc.row_constraint(3)])
    seq = torch.tensor([[tok.eos_token_id]])
    merged = target[-1]
    for i, t in enumerate(ids["input_ids"]):  # every token of the written list is allowed, and nothing after its EOS
        allowed = torch.isfinite(proc(seq, torch.zeros(1, len(tok))))[0]
        assert allowed[t], tok.convert_ids_to_tokens([t])
        if i == len(ids["input_ids"]) - 2:  # the 3rd line's ")": ")\n" would start a 4th line
            assert not allowed[merged]
        seq = torch.cat([seq, torch.tensor([[t]])], dim=1)
    assert torch.isfinite(proc(seq, torch.zeros(1, len(tok))))[0].nonzero().flatten().tolist() == [tok.eos_token_id]
    assert [cc.row_of_item[i] for i in proc.items(0)] == rows and proc.complete(0)


def test_constrained_lists_are_k_distinct_catalog_items_without_excluded(lm, catalog):
    tok, model = lm
    cc = CatalogConstraints(tok, catalog)
    convs = [conversation("A thriller please."), conversation("Anything with dragons?")]
    prompts = encode_prompts(tok, convs, 20, 768)
    exclude = set(range(0, 360, 2))  # half the catalog
    rows = [cc.row_constraint(7, exclude), cc.row_constraint(3)]
    cfg = GenerationConfig(max_new_tokens=cc.max_new_tokens(7))
    texts = generate_texts(model, tok, prompts, cfg, None, cc, rows)
    for text, k, excluded in zip(texts, (7, 3), (exclude, set()), strict=True):
        items = parse_list(text)
        assert len(items) == k, text
        found = [catalog.lookup(t, y) for t, y in items]
        assert all(r >= 0 for r in found) and len(set(found)) == k
        assert not set(found) & excluded


def test_constraint_stops_when_the_catalog_runs_out(lm, catalog):
    tok, model = lm
    cc = CatalogConstraints(tok, catalog)
    keep = {3, 250}
    rows = [cc.row_constraint(5, set(range(len(catalog))) - keep)]
    prompts = encode_prompts(tok, [conversation("hi")], 20, 768)
    (text,) = generate_texts(model, tok, prompts, GenerationConfig(max_new_tokens=80), None, cc, rows)
    assert {catalog.lookup(t, y) for t, y in parse_list(text)} == keep


def test_a_line_cut_by_the_token_budget_is_dropped(lm, catalog):
    tok, model = lm
    cc = CatalogConstraints(tok, catalog)
    prompts = encode_prompts(tok, [conversation("hi")], 20, 768)
    (text,) = generate_texts(model, tok, prompts, GenerationConfig(max_new_tokens=13), None, cc, [cc.row_constraint(5)])
    items = parse_list(text)
    assert 0 < len(items) < 5 and all(catalog.lookup(t, y) >= 0 for t, y in items)


def test_mentions_resolve_titles_with_and_without_year(catalog):
    finder = MentionFinder(catalog)
    r0, r3 = 0, 3  # "Silent Shadow" (1998), "Crimson Island" (1984)
    text = f"I loved {catalog.titles[r0]} ({catalog.years[r0]}) and {catalog.titles[r3].lower()}, not much else."
    assert finder.rows(text) == {r0, r3}
    assert finder.rows("Nothing to see here.") == set()


def test_mentions_find_the_seen_items_of_the_synthetic_test_split(world, catalog):
    samples = load_split(world[0], "test")
    finder = MentionFinder(catalog)
    found = hidden = 0
    for msgs, seen in zip(samples["messages"].to_list(), item_lists(samples["seen"]), strict=True):
        rows = finder.rows_in_messages(msgs)
        for t, y in seen:
            hidden += 1
            found += any(catalog.norm[r] == catalog.resolve(t, y)[0] for r in rows)
    assert hidden > 50 and found == hidden


def test_generate_predictions_constrained_vs_unconstrained(world, lm, catalog):
    tok, model = lm
    samples = load_split(world[0], "test").head(12)
    cfg = GenerationConfig(n_items=5, max_new_tokens=60, batch_size=12)
    plain = generate_predictions(model, tok, samples, cfg)
    cons = generate_predictions(
        model, tok, samples, GenerationConfig(**{**cfg.__dict__, "constrained": True}), None, catalog
    )
    m_plain, _ = evaluate(plain, samples, catalog, EvalConfig(n_items=5))
    m_cons, _ = evaluate(cons, samples, catalog, EvalConfig(n_items=5))
    assert m_cons["in_catalog"] == 1.0 and m_cons["format_valid"] == 1.0 and m_cons["duplicate_ratio"] == 0.0
    assert m_plain["in_catalog"] < 0.5  # untrained: the constraint is what makes the lists valid


def test_generate_cli_constrained(world, tmp_path):
    data, model = world
    out = tmp_path / "pred.parquet"
    args = ("generate", "--model", model, "--data", data, "--out", out, "--limit", "4", "--n-items", "3")
    # one torch thread: on a busy 2-core machine more threads are many times slower
    cmd = [sys.executable, "-m", "convrec.cli.main", *map(str, args), "--constrained"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    texts = pl.read_parquet(out)["text"].to_list()
    cat = Catalog(load_catalog(data))
    assert all(len(parse_list(t)) == 3 and all(cat.lookup(*i) >= 0 for i in parse_list(t)) for t in texts)


def test_generate_cli_bad_dtype(world, tmp_path):
    data, model = world
    args = ("generate", "--model", model, "--data", data, "--out", tmp_path / "p.parquet", "--precision", "int8")
    proc = subprocess.run([sys.executable, "-m", "convrec.cli.main", *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 2 and "--precision" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "p.parquet").exists()


def test_engine_timeout_and_budget(lm, catalog):
    import asyncio

    from convrec.serve.engine import Engine, Job

    tok, model = lm
    engine = Engine(model, tok, catalog, batch_wait_s=0)
    prompt = engine.encode(conversation("hi"))

    async def go():
        loop = asyncio.get_running_loop()

        def job(deadline: float, max_new: int) -> Job:
            return Job(prompt, None, max_new, False, 1.0, 1.0, deadline, loop, loop.create_future())

        engine.start()
        try:
            late, short = job(time.monotonic() - 1, 50), job(time.monotonic() + 60, 4)
            engine.submit(late)
            engine.submit(short)
            return await late.future, await short.future
        finally:
            await asyncio.to_thread(engine.stop)

    late, short = asyncio.run(go())
    assert late.finish_reason == "timeout" and late.tokens == []
    assert short.finish_reason == "length" and len(short.tokens) == 4


def test_served_constrained_lists_never_compute_the_full_head(lm, catalog):
    """A constrained request decodes in the restricted-head loop: the output head module (all its rows)
    never runs, and the greedy list is the one `convrec generate --constrained` writes for that prompt."""
    import asyncio

    from convrec.serve.engine import Engine, Job

    tok, model = lm
    engine = Engine(model, tok, catalog, batch_wait_s=0, n_items=5)
    prompt = engine.encode(conversation("Something scary?"))
    calls = []
    hook = model.get_output_embeddings().register_forward_hook(lambda *a: calls.append(1))

    async def go():
        loop = asyncio.get_running_loop()
        job = Job(
            prompt, engine.constraints.row_constraint(5), 400, False, 1.0, 1.0, time.monotonic() + 60, loop,
            loop.create_future(),
        )  # fmt: skip
        engine.start()
        try:
            engine.submit(job)
            return await job.future
        finally:
            await asyncio.to_thread(engine.stop)

    try:
        served = asyncio.run(go())
    finally:
        hook.remove()
    assert calls == [] and served.finish_reason == "stop" and len(served.items) == 5
    cfg = GenerationConfig(n_items=5, max_new_tokens=400, constrained=True)
    constraints = CatalogConstraints(tok, catalog)
    (written,) = generate_texts(model, tok, [prompt], cfg, None, constraints, [constraints.row_constraint(5)])
    assert engine.decode(served.tokens) == written
    assert [catalog.label(r) for r in served.items] == written.split("\n")


# --- the server ---------------------------------------------------------------------------------
def assert_catalog_list(text: str, catalog: Catalog, n: int) -> list[tuple[str, int | None]]:
    items = parse_list(text)
    assert len(items) == n and len(set(items)) == n, text
    assert all(catalog.lookup(t, y) >= 0 for t, y in items), text
    return items


def test_openai_client_models_and_chat(client, catalog):
    assert [m.id for m in client.models.list().data] == ["convrec"]
    r = client.chat.completions.create(model="convrec", messages=conversation("Something scary?"), max_tokens=12)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 0
    r = client.chat.completions.create(model="convrec", messages=conversation("Something scary?"), extra_body={"k": 4})
    assert r.choices[0].finish_reason == "stop"
    assert_catalog_list(r.choices[0].message.content, catalog, 4)


def test_chat_defaults_to_a_constrained_list(client, catalog):
    """Default settings: the served list length of distinct catalog items, as /v1/recommend gives;
    `"constrained": false` is the documented way to free text (the untrained model writes anything)."""
    msgs = conversation("Something scary?")
    r = client.chat.completions.create(model="convrec", messages=msgs)
    assert_catalog_list(r.choices[0].message.content, catalog, 20)
    free = client.chat.completions.create(
        model="convrec", messages=msgs, max_tokens=40, extra_body={"constrained": False}
    )
    assert free.choices[0].message.content != r.choices[0].message.content


def test_stop_and_neutral_penalties_succeed(client, catalog):
    msgs = conversation("Something scary?")
    whole = (
        client.chat.completions.create(model="convrec", messages=msgs, extra_body={"k": 5}).choices[0].message.content
    )
    r = client.chat.completions.create(
        model="convrec", messages=msgs, stop=["\n"], presence_penalty=0, frequency_penalty=0, extra_body={"k": 5}
    )
    assert r.choices[0].message.content == whole.split("\n")[0] and r.choices[0].finish_reason == "stop"
    # a stop sequence inside a line: the text ends just before it, streamed or not
    line2 = whole.split("\n")[1]
    stop = line2[: len(line2) // 2]
    cut = whole[: whole.index(stop)]
    kw = dict(model="convrec", messages=msgs, stop=[stop, "never"], extra_body={"k": 5})
    assert client.chat.completions.create(**kw).choices[0].message.content == cut
    chunks = list(client.chat.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == cut


def test_penalties_bias_seed_and_n_are_honoured(client, catalog, lm):
    msgs = conversation("Something scary?")
    kw = dict(model="convrec", messages=msgs, extra_body={"k": 6})
    base = client.chat.completions.create(**kw, logprobs=True)
    text = base.choices[0].message.content
    penalised = client.chat.completions.create(**kw, presence_penalty=2, frequency_penalty=2).choices[0].message
    assert penalised.content != text
    assert_catalog_list(penalised.content, catalog, 6)  # penalties act before the catalog mask, never against it
    # logit_bias -100 on the first token the model chose: it chooses another, still a catalog list
    (banned,) = lm[0](base.choices[0].logprobs.content[0].token, add_special_tokens=False)["input_ids"]
    biased = client.chat.completions.create(**kw, logit_bias={str(banned): -100}, logprobs=True).choices[0]
    assert biased.logprobs.content[0].token != base.choices[0].logprobs.content[0].token
    assert_catalog_list(biased.message.content, catalog, 6)
    sampled = dict(kw, temperature=1.0, seed=11)
    a, b = (client.chat.completions.create(**sampled).choices[0].message.content for _ in range(2))
    assert a == b  # a seed makes a sampled answer reproducible, whatever else is in the batch
    r = client.chat.completions.create(**sampled, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2] and r.choices[0].message.content == a
    assert len({c.message.content for c in r.choices}) > 1  # choice i samples with seed + i
    assert r.usage.prompt_tokens == base.usage.prompt_tokens  # one prompt, three completions


def test_logprobs(client):
    kw = dict(model="convrec", messages=conversation("A comedy?"), extra_body={"k": 3}, logprobs=True, top_logprobs=3)
    r = client.chat.completions.create(**kw).choices[0]
    entries = r.logprobs.content
    assert "".join(e.token for e in entries) == r.message.content
    for e in entries:
        assert e.logprob <= 0 and bytes(e.bytes).decode() == e.token
        alts = e.top_logprobs
        assert 1 <= len(alts) <= 3 and alts == sorted(alts, key=lambda a: -a.logprob)
        assert e.logprob == pytest.approx(max(a.logprob for a in alts))  # greedy: the chosen token is the top one
    chunks = list(client.chat.completions.create(**kw, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("response_format", {"type": "json_object"}),
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("tool_choice", "required"),
        ("modalities", ["text", "audio"]),
        ("reasoning_effort", "high"),
    ],
)
def test_fields_that_cannot_be_honoured_are_refused_by_name(server, field, value):
    r = httpx.post(f"{server}/v1/chat/completions", json=chat_body(**{field: value}), headers=auth())
    assert field in assert_openai_error(r, 400, "unsupported_value", field)["message"]


def test_neutral_values_of_standard_fields_are_accepted(server):
    neutral = {
        "response_format": {"type": "text"},
        "tools": [],
        "tool_choice": "none",
        "parallel_tool_calls": True,
        "modalities": ["text"],
        "logprobs": False,
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "logit_bias": {},
        "n": 1,
        "seed": 5,
        "user": "u1",
        "metadata": {"a": "b"},
        "store": False,
        "stream_options": {"include_usage": True, "include_obfuscation": False},
        "prompt_cache_key": "k",
        "safety_identifier": "s",
    }
    r = httpx.post(f"{server}/v1/chat/completions", json=chat_body(**neutral), headers=auth(), timeout=120)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"logit_bias": {"not-a-token": 1}}, "logit_bias"),
        ({"logit_bias": {"10000000": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ],
)
def test_bad_values_of_honoured_fields(server, body, param):
    r = httpx.post(f"{server}/v1/chat/completions", json=chat_body(**body), headers=auth())
    assert_openai_error(r, 400, "invalid_value", param)


def test_openai_client_streaming(client):
    kwargs = dict(
        model="convrec", messages=conversation("A comedy for tonight."), extra_body={"constrained": True, "k": 3}
    )
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([d for d in deltas if d]) > 3  # token by token, not one blob
    assert "".join(deltas) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    # n choices stream interleaved, each under its own index, each ending with its finish reason
    chunks = list(client.chat.completions.create(**kwargs, stream=True, n=2))
    for i in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == i]
        assert "".join(c.delta.content or "" for c in mine) == whole  # greedy: both choices are the same list
        assert mine[-1].finish_reason == "stop"


def test_recommend_is_always_in_catalog_across_the_test_split(server, world, catalog):
    samples = load_split(world[0], "test").unique("conversation_id", keep="first", maintain_order=True)

    def ask(msgs):
        r = httpx.post(f"{server}/v1/recommend", json={"messages": msgs, "k": 3}, headers=auth(), timeout=300)
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, samples["messages"].to_list()))
    texts = []
    for ans, seen in zip(answers, item_lists(samples["seen"]), strict=True):
        data = ans["data"]
        assert [d["rank"] for d in data] == [1, 2, 3]
        for d in data:
            row = catalog.row_of_id[d["item_id"]]
            assert (d["title"], d["year"]) == (catalog.titles[row], catalog.years[row])
            assert isinstance(d["score"], float) and d["score"] <= 0 and d["logprob"] <= 0
        # score: the list's log-probability up to and including the item, so it never rises down the list
        scores = [d["score"] for d in data]
        assert scores == sorted(scores, reverse=True)
        assert scores == pytest.approx(list(itertools.accumulate(d["logprob"] for d in data)), abs=2e-4)
        items = [(d["title"], d["year"]) for d in data]
        assert SEEN not in judge_list(items, [], seen, catalog).status  # seen items named in the text are excluded
        texts.append(format_list(items))
    preds = pl.DataFrame({"sample_id": samples["sample_id"], "text": texts})
    summary, _ = evaluate(preds, samples, catalog, EvalConfig(n_items=3))
    assert summary["in_catalog"] == 1.0 and summary["duplicate_ratio"] == 0.0 and summary["format_valid"] == 1.0


def test_recommend_unconstrained_and_seen(server, catalog):
    text = f"I liked {catalog.titles[0]} ({catalog.years[0]})."
    body = {"messages": conversation(text), "k": 4, "constrained": False}
    r = httpx.post(f"{server}/v1/recommend", json=body, headers=auth(), timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["constrained"] is False and len(out["data"]) <= 4
    assert [s["item_id"] for s in out["seen"]] == [catalog.item_ids[0]]


def test_concurrent_requests_are_batched(server):
    def metric(name: str) -> float:
        text = httpx.get(f"{server}/metrics").text
        return float(next(ln.split()[-1] for ln in text.splitlines() if ln.startswith(f"convrec_{name} ")))

    batches, rows = metric("batches_total"), metric("batched_requests_total")
    body = {"messages": conversation("Surprise me."), "k": 2}
    with ThreadPoolExecutor(12) as pool:
        codes = list(
            pool.map(lambda _: httpx.post(f"{server}/v1/recommend", json=body, headers=auth(), timeout=120), range(12))
        )
    assert all(c.status_code == 200 for c in codes)
    assert metric("batched_requests_total") - rows == 12
    assert metric("batches_total") - batches < 12


def test_page_placeholder_names_a_served_item(server, catalog):
    import html

    import numpy as np

    page = httpx.get(f"{server}/").text
    assert html.escape(catalog.label(int(np.argmax(catalog.popularity)))) in page
    assert "The Matrix" not in page


def test_health_and_metrics(server):
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    httpx.get(f"{server}/v1/models", headers=auth())
    text = httpx.get(f"{server}/metrics").text
    assert 'convrec_requests_total{route="/v1/models",method="GET",status="200"}' in text
    assert 'convrec_request_duration_seconds{route="/v1/models",quantile="0.95"}' in text


# --- bad requests: OpenAI-shaped 4xx ------------------------------------------------------------
def assert_openai_error(r, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    return err


def chat_body(**extra) -> dict:
    return {"model": "convrec", "messages": conversation("hi"), "max_tokens": 4, **extra}


def test_malformed_json(server):
    r = httpx.post(f"{server}/v1/chat/completions", content=b'{"model": "convrec", "messages": [', headers=auth())
    assert_openai_error(r, 400, "invalid_json")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": "hello"}, "messages"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"stream": 1}, "stream"),
        ({"temperature": "hot"}, "temperature"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"messages": []}, "messages"),
        ({"n": 9}, "n"),
    ],
)
def test_wrong_types_and_values(server, body, param):
    r = httpx.post(f"{server}/v1/chat/completions", json=chat_body(**body), headers=auth())
    err = assert_openai_error(r, 400, "invalid_value")
    assert err["param"].startswith(param)


def test_body_not_an_object(server):
    r = httpx.post(f"{server}/v1/recommend", json=[1, 2, 3], headers=auth())
    assert_openai_error(r, 400, "invalid_value")


def test_huge_body(server):
    huge = {"messages": conversation("x" * (2 << 20))}
    r = httpx.post(f"{server}/v1/recommend", json=huge, headers=auth(), timeout=60)
    assert_openai_error(r, 413, "request_too_large")


def test_huge_conversation_under_the_body_limit(server):
    r = httpx.post(f"{server}/v1/recommend", json={"messages": conversation("word " * 40_000)}, headers=auth())
    assert_openai_error(r, 400, "context_length_exceeded", "messages")


@pytest.mark.parametrize("k", [0, 51, 10**9])
def test_k_out_of_range(server, k):
    r = httpx.post(f"{server}/v1/recommend", json={"messages": conversation("hi"), "k": k}, headers=auth())
    assert_openai_error(r, 400, param="k")


def test_max_tokens_over_the_limit(server):
    r = httpx.post(f"{server}/v1/chat/completions", json=chat_body(max_tokens=10**6), headers=auth())
    assert_openai_error(r, 400, param="max_tokens")


def test_unknown_model(server, client):
    r = httpx.post(f"{server}/v1/chat/completions", json=chat_body(model="gpt-9"), headers=auth())
    assert_openai_error(r, 404, "model_not_found", "model")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=conversation("hi"))
    r = httpx.post(f"{server}/v1/recommend", json={"model": "gpt-9", "messages": conversation("hi")}, headers=auth())
    assert_openai_error(r, 404, "model_not_found")


def test_missing_and_wrong_api_key(server):
    for path in ("/v1/models", "/v1/chat/completions", "/v1/recommend"):
        method = httpx.get if path == "/v1/models" else lambda u, **kw: httpx.post(u, json=chat_body(), **kw)
        assert_openai_error(method(f"{server}{path}"), 401, "missing_api_key")
        assert_openai_error(method(f"{server}{path}", headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key")
        assert_openai_error(method(f"{server}{path}", headers={"Authorization": KEY}), 401, "invalid_api_key")
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_unknown_route_and_method(server):
    assert_openai_error(httpx.get(f"{server}/v1/nothing", headers=auth()), 404)
    assert_openai_error(httpx.get(f"{server}/v1/recommend", headers=auth()), 405)


# --- bodies that once gave 500 (issue 15), unknown fields, keep-alive after an error ------------
LONE_SURROGATE = b'{"model": "convrec", "max_tokens": 4, "messages": [{"role": "user", "content": "hi \\ud800"}]}'


@pytest.mark.parametrize(
    ("path", "extra"),
    [("/v1/recommend", b""), ("/v1/chat/completions", b""), ("/v1/chat/completions", b'"stream": true, ')],
)
def test_lone_surrogate_is_a_400(server, path, extra):
    body = LONE_SURROGATE.replace(b"{", b"{" + extra, 1)
    r = httpx.post(f"{server}{path}", content=body, headers={**auth(), "content-type": "application/json"})
    err = assert_openai_error(r, 400, "invalid_json", "messages.0.content")
    assert "surrogate" in err["message"]


def test_a_surrogate_in_a_key_is_a_400(server):
    body = b'{"messages": [{"role": "user", "content": "hi"}], "\\udfff": 1}'
    err = assert_openai_error(httpx.post(f"{server}/v1/recommend", content=body, headers=auth()), 400, "invalid_json")
    assert err["param"] == "\\udfff"  # printable, so the error itself is valid UTF-8


@pytest.mark.parametrize("depth", [50_000, 40])
def test_deeply_nested_json_is_a_400(server, depth):
    body = b'{"messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * depth + b"]" * depth + b"}"
    r = httpx.post(f"{server}/v1/chat/completions", content=body, headers=auth())
    assert "nested more than" in assert_openai_error(r, 400, "invalid_json")["message"]


def test_unknown_fields_are_rejected_by_name(server):
    r = httpx.post(f"{server}/v1/chat/completions", json=chat_body(temprature=0.5), headers=auth())
    err = assert_openai_error(r, 400, "unknown_parameter", "temprature")
    assert "temprature" in err["message"]
    r = httpx.post(f"{server}/v1/recommend", json={"messages": conversation("hi"), "kk": 3}, headers=auth())
    assert_openai_error(r, 400, "unknown_parameter", "kk")
    # OpenAI fields that change nothing here, and message fields the API itself returns, are accepted
    msgs = [{"role": "user", "content": "hi", "name": "ann"}, {"role": "assistant", "content": "ok", "refusal": None}]
    r = httpx.post(f"{server}/v1/chat/completions", json=chat_body(messages=msgs, user="u1", seed=3), headers=auth())
    assert r.status_code == 200, r.text


def one_connection(url: str, requests: list[tuple[str, str, bytes | None]]) -> list[tuple[int, dict, bytes]]:
    """Send requests one after the other on a single keep-alive connection, proving it stayed the same."""
    import http.client
    from urllib.parse import urlparse

    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    conn.connect()
    sock, out = conn.sock, []
    try:
        for method, path, body in requests:
            conn.request(method, path, body=body, headers={**auth(), "content-type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            out.append((r.status, {k.lower(): v for k, v in r.getheaders()}, data))
            assert conn.sock is sock, f"the server closed the connection after {method} {path} ({r.status})"
    finally:
        conn.close()
    return out


def test_keep_alive_survives_bad_requests(server):
    good = json.dumps({"messages": conversation("hi"), "k": 2}).encode()
    deep = b"[" * 50_000 + b"]" * 50_000
    got = one_connection(
        server,
        [
            ("POST", "/v1/recommend", LONE_SURROGATE),
            ("POST", "/v1/recommend", good),
            ("POST", "/v1/chat/completions", deep),
            ("POST", "/v1/recommend", b'{"messages": ['),
            ("POST", "/v1/recommend", good),
        ],
    )
    assert [s for s, _, _ in got] == [400, 200, 400, 400, 200]
    assert len(json.loads(got[-1][2])["data"]) == 2


@pytest.fixture
def in_process(lm, catalog):
    """The app in this process (uvicorn in a thread), so a test can make its engine fail on purpose."""
    import threading

    import uvicorn

    from convrec.serve.app import ServeSettings, create_app
    from convrec.serve.engine import Engine

    tok, model = lm
    engine = Engine(model, tok, catalog, batch_wait_s=0)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(engine, ServeSettings()), host="127.0.0.1", port=port))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", engine
    srv.should_exit = True
    thread.join(timeout=30)


def test_an_unexpected_500_keeps_the_connection_usable(in_process, monkeypatch, caplog):
    url, engine = in_process
    encode = engine.encode

    def flaky_encode(msgs):
        if "boom" in msgs[-1]["content"]:
            raise RuntimeError("a bug, on purpose")
        return encode(msgs)

    monkeypatch.setattr(engine, "encode", flaky_encode)
    boom = json.dumps({"messages": conversation("boom"), "k": 2}).encode()
    good = json.dumps({"messages": conversation("hi"), "k": 2}).encode()
    stream = json.dumps({**chat_body(max_tokens=6), "stream": True}).encode()
    got = one_connection(url, [("POST", "/v1/recommend", boom), ("POST", "/v1/recommend", good)])
    assert [s for s, _, _ in got] == [500, 200]
    assert json.loads(got[0][2])["error"]["type"] == "server_error"
    assert got[0][1].get("connection") != "close"

    monkeypatch.setattr(engine, "decode", lambda tokens: 1 / 0)  # fails after the stream has begun
    got = one_connection(url, [("POST", "/v1/chat/completions", stream), ("GET", "/health", None)])
    assert [s for s, _, _ in got] == [200, 200]
    assert b'"server_error"' in got[0][2] and json.loads(got[1][2])["status"] == "ok"
    metrics = one_connection(url, [("GET", "/metrics", None)])[0][2].decode().splitlines()
    assert 'convrec_requests_total{route="/v1/recommend",method="POST",status="500"} 1' in metrics
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert {r.name for r in errors} == {"convrec.serve"}  # logged by the app; none reached uvicorn
    assert len(errors) == 2 and all(r.exc_info for r in errors)


# --- the CLI --------------------------------------------------------------------------------------
def test_serve_cli_errors(world, tmp_path):
    data, model = world
    proc = run_cli("serve", "--model", model, "--data", data, "--api-key-env", "CONVREC_NO_SUCH_VAR_XYZ")
    assert_user_error(proc, "CONVREC_NO_SUCH_VAR_XYZ")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        proc = run_cli("serve", "--model", model, "--data", data, "--port", str(s.getsockname()[1]))
    assert_user_error(proc, "cannot listen")
    proc = run_cli("serve", "--model", tmp_path / "nope", "--data", data, "--port", str(free_port()))
    assert_user_error(proc, "not a model folder")
    proc = run_cli("serve", "--model", model, "--data", tmp_path / "none.parquet", "--port", str(free_port()))
    assert_user_error(proc, "none.parquet")
    # the old spellings: one line naming the new flag, before anything else is checked
    assert_user_error(run_cli("serve", "--model", model, "--catalog", data), "--catalog is now --data")
    assert_user_error(run_cli("serve", "--catalog", data, "--dtype", "bfloat16"), "is now")
    assert_user_error(run_cli("serve", "--model", model, "--data", data, "--precision", "fp8"), "fp8")


# --- the page, in a real browser ---------------------------------------------------------------
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def test_web_page_in_headless_chromium(server, catalog, tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1100,1000",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        driver.get(f"{server}/")
        assert "convrec" in driver.title
        seen = f"{catalog.titles[0]} ({catalog.years[0]})"
        driver.find_element(By.ID, "conversation").send_keys(f"User: I loved {seen}.\nAssistant: Noted.\nUser: More?")
        k = driver.find_element(By.ID, "k")
        k.clear()
        k.send_keys("4")
        driver.find_element(By.ID, "go").click()
        # without the key the page shows the server's error
        WebDriverWait(driver, 60).until(lambda d: "API key" in d.find_element(By.ID, "status").text)
        driver.find_element(By.ID, "api-key").send_keys(KEY)
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver, 120).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tr.item")) == 4)
        rows = [
            [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in driver.find_elements(By.CSS_SELECTOR, "#results tr.item")
        ]
        assert [r[0] for r in rows] == ["1", "2", "3", "4"]
        assert all(catalog.lookup(title, int(year)) >= 0 for _, title, year, _ in rows)
        assert seen not in {f"{t} ({y})" for _, t, y, _ in rows}
        assert catalog.titles[0] in driver.find_element(By.ID, "seen").text
        shot = os.environ.get("CONVREC_SCREENSHOT")
        if shot:
            driver.save_screenshot(shot)
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_no_5xx_so_far(server):
    text = httpx.get(f"{server}/metrics").text
    statuses = [json.loads(ln.split('status="')[1].split('"')[0]) for ln in text.splitlines() if "status=" in ln]
    assert statuses and all(s < 500 for s in statuses)
