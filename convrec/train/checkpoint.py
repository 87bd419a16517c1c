"""Checkpoints: a `save_pretrained` folder plus the trainer state, swapped in atomically."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from convrec.errors import ConvrecError
from convrec.train import distributed, lora, runlog

STATE = "trainer_state.pt"


def save(folder: Path, model, tokenizer, state: dict | None = None) -> None:
    """Write to a temporary folder, then swap it in: a crash never leaves a half checkpoint.

    A LoRA model is saved merged (a plain model folder) with its adapter in ``adapter/``.
    """
    folder = Path(folder)
    recover(folder)
    tmp, old = _side_folders(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if lora.is_peft(model):
            lora.merged_copy(model).save_pretrained(tmp)
            model.save_pretrained(tmp / lora.ADAPTER)
        else:
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if state is not None:
            torch.save(state, tmp / STATE)
    except Exception as e:  # a full disk surfaces as OSError, safetensors' SafetensorError or torch's RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        kept = "the previous one is kept" if folder.exists() else "nothing was written"
        raise ConvrecError(f"{folder}: could not write the checkpoint ({reason}); {kept}") from e
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _side_folders(folder: Path) -> tuple[Path, Path]:
    return folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")


def recover(folder: Path) -> None:
    """Finish a swap that a kill interrupted. `save` renames FOLDER to .FOLDER.old and only then the
    complete .FOLDER.tmp to FOLDER: with FOLDER missing, .tmp is the newer whole checkpoint, .old the one
    before it."""
    folder = Path(folder)
    if folder.exists():
        return
    tmp, old = _side_folders(folder)
    if old.is_dir() and tmp.is_dir():
        tmp.rename(folder)
    elif old.is_dir():
        old.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def has_state(folder: Path) -> bool:
    """Whether ``folder`` (a RUN/last) can be resumed from, after `recover` finished any broken swap."""
    recover(folder)
    return (Path(folder) / STATE).exists()


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
    recover(folder)
    path = Path(folder) / STATE
    if not path.exists():
        raise ConvrecError(f"{folder}: no trainer state to resume from ({STATE} missing)")
    try:
        return torch.load(path, weights_only=False)
    except Exception as e:
        raise ConvrecError(f"{path}: corrupt trainer state ({type(e).__name__})") from None


def rng_state() -> dict:
    """This process's random state: the CPU generator and, on a GPU, its CUDA generator."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(saved) -> None:
    """Restore this rank's entry of a checkpoint's per-rank states (one tensor: an older checkpoint,
    the CPU state rank 0 had)."""
    if isinstance(saved, torch.Tensor):
        torch.set_rng_state(saved)
        return
    mine = saved[distributed.rank() % len(saved)]  # resumed on more processes: not exact anyway
    torch.set_rng_state(mine["cpu"])
    if "cuda" in mine and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine["cuda"])


def validation_due(step: int, total: int, every: int) -> bool:
    """Validate (and checkpoint) every ``every`` steps and after the last one."""
    return step % every == 0 or step == total


class Checkpointer:
    """One run's checkpoints, the same for sft and rl: ``RUN/last`` (model + trainer state: optimiser,
    scheduler, every rank's RNG, step, best metric), ``RUN/best`` by the validation metric, K-1 older copies of
    last (`keep_copy`), and with DeepSpeed each rank's optimiser shard in ``RUN/ds_state``.

    `save` is collective (every rank calls it); rank 0 alone validates and writes model folders."""

    def __init__(self, out: Path, model, tokenizer, optimizer, *, scheduler=None, engine=None, keep_last: int = 1):
        self.out, self.model, self.tokenizer = Path(out), model, tokenizer
        self.optimizer, self.scheduler, self.engine, self.keep_last = optimizer, scheduler, engine, keep_last
        self.step, self.best = 0, -1.0

    def resume(self, state: dict) -> None:
        """Continue exactly from ``RUN/last``'s trainer state (`load_state`)."""
        if self.engine is not None:  # partitioned optimizer state: every rank loads its own shard
            self.engine.load_checkpoint(str(self.out / "ds_state"), load_module_strict=True)
        else:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step, self.best = state["step"], state["best"]

    def save(self, step: int, validate, *, metric: str = "ndcg@20", save_last: bool = True) -> dict | None:
        """Capture the trainer state, then on rank 0 run ``validate()`` (a dict of metrics), save
        ``RUN/best`` when ``metric`` improved and ``RUN/last`` (unless ``save_last`` is False, as at an
        RL run's step 0). Returns the metrics on rank 0, None elsewhere."""
        # every rank's generators (collective): ranks sample different prompts, so their streams differ
        state = {"rng": distributed.gather(rng_state()), "step": step, "best": self.best}
        if self.engine is not None:
            self.engine.save_checkpoint(str(self.out / "ds_state"), tag=f"step{step}")  # collective
        else:
            state["optimizer"] = self.optimizer.state_dict()
            if self.scheduler is not None:
                state["scheduler"] = self.scheduler.state_dict()
        metrics = None
        if distributed.is_main():
            metrics = validate()
            if metrics[metric] > self.best:
                self.best = state["best"] = metrics[metric]
                save(self.out / "best", self.model, self.tokenizer)
            if save_last:
                save(self.out / "last", self.model, self.tokenizer, state)
                keep_copy(self.out, step, self.keep_last)
        distributed.barrier()
        if self.engine is not None and distributed.is_main():  # keep only the newest DeepSpeed state
            runlog.prune_deepspeed_states(self.out, step)
        return metrics
