"""LoRA adapters (peft) for students too large to fine-tune fully.

Checkpoints stay plain `save_pretrained` folders: the adapter is merged into a copy of the model
for `RUN/last` and `RUN/best` (so generate, eval and serve need no peft), and the unmerged adapter
is kept in `RUN/last/adapter` so `--resume` continues the same low-rank weights exactly.

A model imported with one token per catalog line (`model import --item-tokens`) also trains those
embedding rows (peft's ``trainable_token_indices``; the tied output head follows), merged the same way.
"""

from __future__ import annotations

import copy
from pathlib import Path

from convrec.errors import ConvrecError
from convrec.models.load import item_token_ids

ADAPTER = "adapter"


def wrap(model, r: int, alpha: int, dropout: float, resume_from: Path | None = None):
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError:
        raise ConvrecError("--lora-r needs the peft package (pip install peft)") from None
    if resume_from is not None:
        if not (resume_from / ADAPTER).is_dir():
            raise ConvrecError(f"{resume_from}: no LoRA adapter to resume from ({ADAPTER}/ missing)")
        return PeftModel.from_pretrained(model, str(resume_from / ADAPTER), is_trainable=True)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
        trainable_token_indices=item_token_ids(model) or None,
    )
    return get_peft_model(model, config)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def merged_copy(model):
    """A plain transformers model with the adapter folded in; the training model is untouched."""
    return copy.deepcopy(model).merge_and_unload()
