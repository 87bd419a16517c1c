"""`convrec model init`: a tiny Llama-family model built from scratch, tokenizer included.

No hub is reachable here, so the embedded default and the tests need a real model the project
makes itself: a byte-level BPE tokenizer trained (`tokenizers`) on the dataset's conversations,
prompts and catalog lines, a chat template, and a randomly initialised `LlamaForCausalLM` saved
with `save_pretrained`. Every later stage then loads it exactly like `Qwen/Qwen2.5-0.5B-Instruct`.

The newline is split off before byte-level BPE, so it is always its own token: Rank-GRPO cuts a
completion into items at newline tokens.

`item_tokens` also gives every catalog line (`Title (Year)`) one added token of its own, on top of
the BPE pieces that still spell titles mentioned without a year. A from-scratch student knows no
titles; with one token per item each rank of a list is one choice over the catalog whose output
embedding every occurrence trains, instead of a spelling spread over shared sub-words (measured on
the default world in the README). Lists, prompts and every stage stay plain text.

`instruction_token` gives the prompt's fixed instruction (`prompts.instruction(n)`, 49 BPE pieces)
one added token: every prompt still says it in full, but a from-scratch student reads a constant
that carries no information about the conversation as one position instead of half its prompt,
so each SFT/RL step runs over ~35 % fewer tokens (measured on the default world in the README).
A prompt for another N spells the instruction in BPE pieces, as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from convrec.data import SPLITS, load_catalog, load_split, split_path
from convrec.errors import ConvrecError
from convrec.listfmt import format_item
from convrec.prompts import build_messages, instruction

SPECIAL = {"bos": "<|bos|>", "eos": "<|end|>", "pad": "<|pad|>", "unk": "<|unk|>"}
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SIZES = {  # hidden, layers, heads, kv heads, intermediate, vocab
    "tiny": (192, 4, 6, 2, 512, 4096),
    "small": (256, 6, 8, 4, 704, 8192),
}
# The students users train, at their published shapes (config.json of each model card; no download), for GPU
# speed and memory measurements only: random weights, the vocabulary's size but the dataset's own tokenizer
# (its ids are the first rows; the rest, untrained, are there so logits and embeddings cost what they do).
_LLAMA32 = {
    "vocab_size": 128256, "intermediate_size": 8192, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "max_position_embeddings": 131072, "tie_word_embeddings": True,
    "rope_scaling": {
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}  # fmt: skip
SHAPES = {  # name: (transformers config class, its arguments)
    "qwen2.5-0.5b": ("Qwen2Config", {
        "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "max_position_embeddings": 32768, "tie_word_embeddings": True,
    }),
    "llama3.2-1b": ("LlamaConfig", {
        **_LLAMA32, "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "head_dim": 64,
    }),
    "llama3.2-3b": ("LlamaConfig", {
        **_LLAMA32, "hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 24, "head_dim": 128,
    }),
}  # fmt: skip
SIZE_NAMES = (*SIZES, *SHAPES)
SHAPE_TOKENIZER_VOCAB = SIZES["small"][-1]


def training_texts(data_dir: Path) -> Iterator[str]:
    """Everything the model will read or write: prompts and catalog lines."""
    cat = load_catalog(data_dir)
    for t, y in zip(cat["title"], cat["year"], strict=True):
        yield format_item(t, y)
    for split in SPLITS:
        if split_path(data_dir, split).exists():
            for msgs in load_split(data_dir, split)["messages"].to_list():
                yield build_messages(msgs)[0]["content"]


def train_tokenizer(texts: Iterator[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL.values(), *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL["bos"],
        eos_token=SPECIAL["eos"],
        pad_token=SPECIAL["pad"],
        unk_token=SPECIAL["unk"],
        additional_special_tokens=ROLE_TOKENS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # batched generation appends to the right
    return fast


def add_item_tokens(tokenizer, cat) -> int:
    """One token per catalog line with a year (not special: decoding keeps it); returns how many.

    Added tokens match anywhere in a text, so a yearless title ("It") would swallow pieces of words
    ("Italy"); `(Year)` makes a line unambiguous, and yearless items keep their BPE spelling.
    """
    from tokenizers import AddedToken

    lines = [format_item(t, y) for t, y in zip(cat["title"], cat["year"], strict=True) if y is not None]
    return tokenizer.add_tokens([AddedToken(x, normalized=False) for x in dict.fromkeys(lines)])


def add_instruction_token(tokenizer, n_items: int = 20) -> int:
    """The instruction for ``n_items`` as one added token (not special: a decoded prompt keeps it)."""
    from tokenizers import AddedToken

    return tokenizer.add_tokens([AddedToken(instruction(n_items), normalized=False)])


def model_config(size: str, tokenizer):
    """The transformers config of a ``size``: a tiny Llama sized to the tokenizer, or a published shape."""
    import transformers

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    ids["pad_token_id"] = tokenizer.pad_token_id
    if size in SHAPES:
        cls, kwargs = SHAPES[size]
        return getattr(transformers, cls)(**kwargs, **ids)
    hidden, layers, heads, kv_heads, inter, _ = SIZES[size]
    return transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=1024,
        tie_word_embeddings=True, **ids,
    )  # fmt: skip


def init_model(
    data_dir: str | Path,
    out: str | Path,
    *,
    size: str = "tiny",
    seed: int = 0,
    item_tokens: bool = False,
    instruction_token: bool = False,
    n_items: int = 20,
) -> dict:
    """Train the tokenizer, build a random Llama, save both to ``out``; return a summary."""
    import torch
    from transformers import AutoModelForCausalLM

    from convrec.models.load import quiet_transformers

    quiet_transformers()
    if size not in SIZE_NAMES:
        raise ConvrecError(f"unknown model size '{size}': choose one of {', '.join(SIZE_NAMES)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConvrecError(f"{out}: is a file, expected a folder for the model")
    vocab = SIZES[size][-1] if size in SIZES else SHAPE_TOKENIZER_VOCAB
    tokenizer = train_tokenizer(training_texts(Path(data_dir)), vocab)
    items = add_item_tokens(tokenizer, load_catalog(Path(data_dir))) if item_tokens else 0
    if instruction_token and n_items < 1:
        raise ConvrecError(f"--n-items must be at least 1, got {n_items}")
    instr = add_instruction_token(tokenizer, n_items) if instruction_token else 0
    config = model_config(size, tokenizer)
    torch.manual_seed(seed)
    if size in SHAPES:  # stored in bf16 like the published checkpoints (training loads fp32 masters)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    else:
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = out.with_name(f".{out.name}.tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():  # replace atomically-ish: the old model stays until the new one is complete
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": len(tokenizer),
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "size": size,
        "item_tokens": items,
        "instruction_token": instr,
    }
