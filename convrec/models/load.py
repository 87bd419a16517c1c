"""Load any causal LM with its tokenizer: a hub id (users with internet) or a local folder."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from convrec.errors import ConvrecError

# config.json key: [first, end) of the ids `model import --item-tokens` added, one per catalog line;
# LoRA SFT trains those embedding rows with the adapter
ITEM_TOKENS = "convrec_item_tokens"


def item_token_ids(model) -> list[int]:
    """The catalog-line token ids `model import --item-tokens` added to this model (none: [])."""
    span = getattr(getattr(model, "config", None), ITEM_TOKENS, None)
    return list(range(*span)) if span else []


def quiet_transformers() -> None:
    """No per-shard progress bars or load reports: convrec shows its own progress."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def _check_local(name_or_path: str | Path) -> dict:
    """A local-looking path that is not a model folder is a user error, not a hub lookup. A hub id
    without a reachable hub loads from the local cache only (or fails at once, with one line) instead
    of a minute of retries; returns the matching `from_pretrained` options."""
    p = Path(name_or_path)
    if (str(name_or_path).startswith((".", "/")) or p.exists()) and not (p / "config.json").exists():
        raise ConvrecError(f"{name_or_path}: not a model folder (no config.json)")
    if p.exists() or _hub_reachable():
        return {}
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(str(name_or_path), "config.json"), str):
        raise ConvrecError(
            f"{name_or_path}: not a local model folder, not in the Hugging Face cache, and the hub cannot be "
            "reached (no network?): download it where there is one, or pass a folder"
        )
    return {"local_files_only": True}


@lru_cache(maxsize=1)
def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub's host (HF_ENDPOINT), once per process; HF_HUB_OFFLINE=1 means no."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def load_tokenizer(name_or_path: str | Path):
    from transformers import AutoTokenizer

    quiet_transformers()
    hub = _check_local(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path), **hub)
    except Exception as e:  # transformers raises OSError, ValueError, JSON errors... for bad folders
        raise ConvrecError(f"{name_or_path}: cannot load a tokenizer ({type(e).__name__}: {_first_line(e)})") from None
    if tok.chat_template is None:
        raise ConvrecError(f"{name_or_path}: the tokenizer has no chat template (use an instruct/chat model)")
    if tok.pad_token is None:  # many base models ship without one; batching needs it
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def turn_end_id(tokenizer) -> int:
    """The token the chat template writes right after an assistant message: what the model must learn
    to stop with (Gemma's ``<end_of_turn>``, Qwen's ``<|im_end|>``, the tiny student's EOS)."""
    mark = "\u2063convrec\u2063"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": mark}], tokenize=False
        )
    except Exception:  # a template that cannot render this pair: fall back to EOS
        text = ""
    after = text.partition(mark)[2]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after.strip() else []
    # a special or added token (<end_of_turn>, <|im_end|>), not the first piece of ordinary text
    if ids and (
        ids[0] in tokenizer.all_special_ids or tokenizer.convert_ids_to_tokens(ids[0]) in tokenizer.get_added_vocab()
    ):
        return int(ids[0])
    return int(tokenizer.eos_token_id)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Every id that ends a turn, the training target's stop token first: the chat template's turn end,
    the tokenizer's EOS and the model's ``generation_config.eos_token_id`` (an int or a list)."""
    ids = [turn_end_id(tokenizer), tokenizer.eos_token_id]
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    ids += extra if isinstance(extra, list | tuple) else [extra]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def default_device():
    """This process's GPU when there is one (LOCAL_RANK under torchrun), else the CPU."""
    import os

    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def load_model(name_or_path: str | Path, *, dtype: str | None = None):
    """A causal LM in eval mode on `default_device()`. A local path that does not exist is a user
    error, not a hub lookup."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    kwargs = _check_local(name_or_path) | ({"dtype": getattr(torch, dtype)} if dtype else {})
    try:
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    except Exception as e:
        raise ConvrecError(f"{name_or_path}: cannot load the model ({type(e).__name__}: {_first_line(e)})") from None
    return model.to(default_device()).eval()


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""
