"""The tiny local model: built by the real CLI, loaded like any hub model, chat template, generation."""

import pytest
import torch

from convrec.errors import ConvrecError
from convrec.models.load import load_model, load_tokenizer
from convrec.prompts import build_messages
from tests.conftest import assert_user_error, run_cli


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from convrec.data.synth import generate

    root = tmp_path_factory.mktemp("models")
    generate(root / "data", seed=0)
    proc = run_cli("model", "init", "--data", root / "data", "--out", root / "model")
    assert proc.returncode == 0, proc.stderr
    assert "parameters" in proc.stdout
    return root / "model", root / "data"


def test_model_loads_and_has_a_few_million_parameters(tiny_model):
    path, _ = tiny_model
    model = load_model(path)
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < n < 10_000_000
    assert model.config.model_type == "llama"


def test_tokenizer_chat_template_and_newline_token(tiny_model):
    path, _ = tiny_model
    tok = load_tokenizer(path)
    prompt = build_messages([{"role": "user", "content": "I love horror."}])
    text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|assistant|>\n") and "I love horror." in text and "Title (Year)" in text
    ids = tok("Quiet Dream (2020)\nThe Forest (1961)\n", add_special_tokens=False).input_ids
    newline = tok.convert_tokens_to_ids(tok.tokenize("\n"))
    assert len(newline) == 1 and ids.count(newline[0]) == 2  # each newline is exactly one token
    assert tok.decode(ids) == "Quiet Dream (2020)\nThe Forest (1961)\n"


def test_generation_runs(tiny_model):
    path, _ = tiny_model
    tok, model = load_tokenizer(path), load_model(path)
    batch = tok.apply_chat_template(
        [build_messages([{"role": "user", "content": c}]) for c in ("I like comedy.", "Something scary please!")],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
        padding=True,
    )
    torch.manual_seed(0)
    out = model.generate(**batch, max_new_tokens=8, do_sample=True, pad_token_id=tok.pad_token_id)
    assert out.shape[0] == 2 and out.shape[1] > batch["input_ids"].shape[1]


def test_bad_model_folders(tmp_path):
    with pytest.raises(ConvrecError, match="not a model folder"):
        load_model(tmp_path)
    with pytest.raises(ConvrecError, match="not a model folder"):
        load_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(ConvrecError, match="cannot load the model"):
        load_model(tmp_path)
    with pytest.raises(ConvrecError, match="cannot load a tokenizer"):
        load_tokenizer(tmp_path)


def test_model_init_bad_input(tmp_path):
    assert_user_error(run_cli("model", "init", "--data", tmp_path / "none", "--out", tmp_path / "m"), "no such data")
    (tmp_path / "d").mkdir()
    assert_user_error(run_cli("model", "init", "--data", tmp_path / "d", "--out", tmp_path / "m"), "catalog.parquet")


def test_model_init_unknown_size(tiny_model, tmp_path):
    _, data = tiny_model
    assert_user_error(run_cli("model", "init", "--data", data, "--out", tmp_path / "m", "--size", "huge"), "size")


def test_long_conversations_lose_their_oldest_turns(tiny_model):
    from convrec.generate import encode_prompt

    path, _ = tiny_model
    tok = load_tokenizer(path)
    msgs = [{"role": "user", "content": f"turn {i} " + "horror comedy drama " * 30} for i in range(6)]
    full, cut = encode_prompt(tok, msgs, 20, 10_000)
    assert not cut
    ids, cut = encode_prompt(tok, msgs, 20, len(full) // 2)
    assert cut and len(ids) <= len(full) // 2
    text = tok.decode(ids)
    assert text.startswith("<|bos|><|user|>") and "turn 5" in text and "turn 0" not in text
    assert text.endswith("<|assistant|>\n") and "Title (Year)" in text
    one = [{"role": "user", "content": "x " * 2000 + "the end"}]
    ids, cut = encode_prompt(tok, one, 20, 200)
    assert cut and len(ids) <= 200 and "the end" in tok.decode(ids)
    with pytest.raises(ConvrecError, match="template alone"):
        encode_prompt(tok, one, 20, 10)
