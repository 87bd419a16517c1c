"""Checkpoints: a `save_pretrained` folder plus the trainer state, swapped in atomically."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from convrec.errors import ConvrecError
from convrec.train import lora

STATE = "trainer_state.pt"


def save(folder: Path, model, tokenizer, state: dict | None = None) -> None:
    """Write to a temporary folder, then swap it in: a crash never leaves a half checkpoint.

    A LoRA model is saved merged (a plain model folder) with its adapter in ``adapter/``.
    """
    folder = Path(folder)
    tmp, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    if lora.is_peft(model):
        lora.merged_copy(model).save_pretrained(tmp)
        model.save_pretrained(tmp / lora.ADAPTER)
    else:
        model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if state is not None:
        torch.save(state, tmp / STATE)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def keep_copy(run: Path, step: int, keep_last: int) -> None:
    """Copy RUN/last to RUN/checkpoints/stepN and drop the oldest beyond keep_last - 1 copies."""
    if keep_last <= 1:
        return
    folder = Path(run) / "checkpoints"
    folder.mkdir(exist_ok=True)
    shutil.copytree(Path(run) / "last", folder / f"step{step:08d}", dirs_exist_ok=True)
    for old in sorted(folder.glob("step*"))[: -(keep_last - 1)]:
        shutil.rmtree(old, ignore_errors=True)


def load_state(folder: Path) -> dict:
    path = Path(folder) / STATE
    if not path.exists():
        raise ConvrecError(f"{folder}: no trainer state to resume from ({STATE} missing)")
    try:
        return torch.load(path, weights_only=False)
    except Exception as e:
        raise ConvrecError(f"{path}: corrupt trainer state ({type(e).__name__})") from None
