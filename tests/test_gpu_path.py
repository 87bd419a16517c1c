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
