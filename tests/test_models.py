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


def test_a_hub_id_without_a_hub_is_one_line_at_once(tiny_data, tmp_path):
    """No minute of download retries: an unreachable hub (a closed local port here) and an id that is not
    in the cache fail on the first look, with one line."""
    import os

    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    proc = run_cli("generate", "--model", "someone/not-cached", "--data", tiny_data, "--out", tmp_path / "p.parquet",
                   env=env)  # fmt: skip
    assert_user_error(proc, "someone/not-cached", "cannot be reached")
    assert "Retrying" not in proc.stderr and not (tmp_path / "p.parquet").exists()


def test_model_init_bad_input(tmp_path):
    assert_user_error(run_cli("model", "init", "--data", tmp_path / "none", "--out", tmp_path / "m"), "no such data")
    (tmp_path / "d").mkdir()
    assert_user_error(run_cli("model", "init", "--data", tmp_path / "d", "--out", tmp_path / "m"), "catalog.parquet")


def test_model_init_unknown_size(tiny_model, tmp_path):
    _, data = tiny_model
    assert_user_error(run_cli("model", "init", "--data", data, "--out", tmp_path / "m", "--size", "huge"), "size")


def test_long_conversations_lose_their_oldest_turns(tiny_model):
    from convrec.decoding.generate import encode_prompt

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


# --- convrec model import: bad input (the real Gemma import is in tests/test_real_model.py) ----------
def test_import_bad_sources(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf file")
    assert_user_error(run_cli("model", "import", fake, "--out", tmp_path / "m"), "not a GGUF file")
    missing = "convrec-no-such-model-package"
    assert_user_error(run_cli("model", "import", missing, "--out", tmp_path / "m"), "no installed package", missing)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert_user_error(run_cli("model", "import", tmp_path / "empty", "--out", tmp_path / "m"), "no model weights")
    assert_user_error(run_cli("model", "import", tmp_path / "nowhere", "--out", tmp_path / "m"), "no such file")
    assert_user_error(
        run_cli("model", "import", tmp_path / "empty", "--out", tmp_path / "m", "--precision", "fp16"), "--precision"
    )
    assert not (tmp_path / "m").exists()


def _ascii_only_model(folder):
    """A tiny Llama whose BPE tokenizer has no byte fallback and saw ASCII only: 'é' becomes <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from convrec.models.tiny import CHAT_TEMPLATE

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(
        ["A Movie (2000) Bee Story Cats & Dogs Dune The Matrix Ocean's Eleven Elf Fargo 0123456789"], trainer
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    cfg = LlamaConfig(
        vocab_size=len(fast), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)


def test_import_refuses_a_tokenizer_that_cannot_write_the_catalog(tmp_path, tiny_data):
    _ascii_only_model(tmp_path / "ascii")
    proc = run_cli("model", "import", tmp_path / "ascii", "--out", tmp_path / "m", "--data", tiny_data)
    assert_user_error(proc, "cannot represent", "Amélie (2001)")


def test_import_a_local_folder_keeps_its_template(tiny_model, tmp_path):
    path, data = tiny_model
    proc = run_cli("model", "import", path, "--out", tmp_path / "m", "--data", data, "--precision", "bf16")
    assert proc.returncode == 0, proc.stderr
    assert "the model's own" in proc.stdout
    assert load_model(tmp_path / "m").dtype == torch.bfloat16
    assert load_tokenizer(tmp_path / "m").chat_template == load_tokenizer(path).chat_template


def test_model_init_item_tokens(tiny_model, tmp_path):
    """`--item-tokens`: every catalog line is one token, lists round-trip as text, the newline stays its
    own token, mentions without a year keep their BPE spelling, constrained decoding writes items."""
    from convrec.data import load_split, open_catalog
    from convrec.decoding.generate import GenerationConfig, generate_predictions

    plain, data = tiny_model
    proc = run_cli("model", "init", "--data", data, "--out", tmp_path / "m", "--item-tokens")
    assert proc.returncode == 0, proc.stderr
    tok, base = load_tokenizer(tmp_path / "m"), load_tokenizer(plain)
    catalog = open_catalog(data)
    labels = [catalog.label(r) for r in range(len(catalog))]
    assert len(tok) == len(base) + len(set(labels))  # the synthetic catalog: every item has a year
    text = "\n".join(labels[:5]) + "\n"
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) == 10 and tok.decode(ids) == text
    title = catalog.titles[0]
    assert (
        tok(f"I loved {title}.", add_special_tokens=False).input_ids
        == base(f"I loved {title}.", add_special_tokens=False).input_ids
    )
    model = load_model(tmp_path / "m")
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    samples = load_split(data, "test").head(2)
    cfg = GenerationConfig(n_items=5, max_new_tokens=20, constrained=True)
    preds = generate_predictions(model, tok, samples, cfg, catalog=catalog)
    for text in preds["text"]:
        lines = text.splitlines()
        assert len(lines) == 5 and len(set(lines)) == 5 and set(lines) <= set(labels)


def test_model_init_instruction_token(tiny_model, tmp_path):
    """`--instruction-token`: the prompt's instruction for N is one token, so every prompt is that many
    positions shorter and still decodes to the same text; a prompt for another N spells it in pieces."""
    from convrec.data import load_split
    from convrec.prompts import instruction

    plain, data = tiny_model
    proc = run_cli("model", "init", "--data", data, "--out", tmp_path / "m", "--item-tokens", "--instruction-token")
    assert proc.returncode == 0, proc.stderr
    tok = load_tokenizer(tmp_path / "m")
    base = load_tokenizer(plain)

    def n(t, text: str) -> int:
        return len(t(text, add_special_tokens=False).input_ids)

    pieces = n(base, instruction(20))
    assert pieces > 20 and n(tok, instruction(20)) == 1
    for msgs in load_split(data, "train").head(3)["messages"].to_list():
        text = tok.apply_chat_template(build_messages(msgs), tokenize=False, add_generation_prompt=True)
        bare = text.replace(instruction(20), "")  # the instruction sits between "\n\n" and <|end|>
        assert n(tok, text) - n(tok, bare) == 1 and n(base, text) - n(base, bare) == pieces
        assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
        other = build_messages(msgs, n=5)[0]["content"]  # the instruction for 5 items is not the token
        assert tok.decode(tok(other, add_special_tokens=False).input_ids) == other
        assert n(tok, other) > n(tok, build_messages(msgs)[0]["content"])
    assert load_model(tmp_path / "m").get_input_embeddings().weight.shape[0] == len(tok)
    assert_user_error(
        run_cli("model", "init", "--data", data, "--out", tmp_path / "m0", "--instruction-token", "--n-items", "0"),
        "--n-items",
    )
