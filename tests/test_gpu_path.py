"""What the GPU path offers that can be checked without a GPU: students at the published shapes and
the smoke script's refusal on a machine without CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from convrec.models.tiny import SHAPES, model_config
from tests.conftest import tiny_world

ROOT = Path(__file__).resolve().parents[1]
# parameter counts of the published checkpoints (tied embeddings counted once)
PUBLISHED = {"qwen2.5-0.5b": 494_032_768, "llama3.2-1b": 1_235_814_400, "llama3.2-3b": 3_212_749_824}


@pytest.mark.parametrize("size", sorted(SHAPES))
def test_published_shapes_have_the_published_parameter_counts(size):
    """Built on the meta device (no memory): every matrix at the model card's shape, vocabulary included."""
    import transformers

    tokenizer = SimpleNamespace(bos_token_id=0, eos_token_id=1, pad_token_id=2)
    config = model_config(size, tokenizer)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[size]
    assert config.tie_word_embeddings and config.eos_token_id == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the smoke script runs instead")
def test_gpu_smoke_refuses_without_cuda_in_one_line():
    proc = subprocess.run([sys.executable, "bench/gpu_smoke.py"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0] and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("gc"))


def test_rl_gradient_checkpointing_scores_and_differentiates_the_same(world):
    """`rl --gradient-checkpointing` scores each rollout as a full sequence (transformers drops the KV
    cache the shared-prompt path continues from): same log-probs, entropies and gradients."""
    from convrec.data import load_split
    from convrec.decoding.generate import encode_prompts
    from convrec.models.load import load_model, load_tokenizer
    from convrec.train.rl import token_logps

    tok, model = load_tokenizer(world / "model"), load_model(world / "model")
    model.train()
    msgs = load_split(world / "data", "train")["messages"].to_list()[:3]
    prompts = encode_prompts(tok, msgs, 4, 512)
    rows = [prompts[0]] * 2 + [prompts[1]] * 2 + [prompts[2]]
    t, g = 7, torch.Generator().manual_seed(0)
    comp = torch.randint(3, len(tok), (len(rows), t), generator=g)
    mask = torch.arange(t)[None] < torch.tensor([7, 3, 5, 1, 6])[:, None]
    comp = torch.where(mask, comp, tok.pad_token_id)
    weights = torch.linspace(0.5, 2, t)

    results = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.zero_grad()
        logp, ent = token_logps(model, rows, comp, mask, tok.pad_token_id, 1.2, shared=not checkpointing)
        (logp * weights).sum().backward()
        results.append((logp.detach(), ent, [p.grad.clone() for p in model.parameters()]))
    (a, ea, ga), (b, eb, gb) = results
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(ea, eb, atol=1e-4)
    assert all(torch.allclose(x, y, atol=1e-5, rtol=1e-4) for x, y in zip(ga, gb, strict=True))


def test_rl_runs_with_gradient_checkpointing(world, tmp_path):
    from tests.conftest import run_cli
    from tests.test_rl import RL_ARGS

    base = ["--model", world / "model", "--data", world / "data", "--out", tmp_path / "r", "--max-steps", "1"]
    proc = run_cli("rl", *base, *RL_ARGS, "--gradient-checkpointing", "--eval-every", "1", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
