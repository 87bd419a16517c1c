"""DeepSpeed ZeRO-2 across processes (torchrun / deepspeed launcher), gloo on CPU, nccl on GPU.

Single-process runs never import deepspeed. In a multi-process run every rank trains on its own
slice of each global batch; rank 0 alone validates, logs and writes `save_pretrained` folders
(ZeRO-2 partitions optimizer state and gradients, not parameters, so rank 0 holds the full model).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from convrec import CLI_MODULE
from convrec.errors import ConvrecError


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def mean_across_ranks(value: float) -> float:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t) / world_size()


def mean_across_ranks_many(values: list[float]) -> list[float]:
    """Element-wise mean of a list of floats over all processes, in one all-reduce."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return (t / world_size()).tolist()


def resolve_config(path: str | Path, *, micro_batch: int, grad_accum: int, max_grad_norm: float) -> dict:
    """Read a DeepSpeed JSON config and fill its "auto" values from the run's own settings."""
    path = Path(path)
    if not path.is_file():
        raise ConvrecError(f"{path}: no such DeepSpeed config file")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConvrecError(f"{path}: not valid JSON (line {e.lineno})") from None
    fills = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": max_grad_norm,
    }
    for key, value in fills.items():
        if cfg.get(key, "auto") == "auto":
            cfg[key] = value
    cfg.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the world size
    zero = cfg.get("zero_optimization") or {}
    offload = [k for k in ("offload_optimizer", "offload_param") if (zero.get(k) or {}).get("device", "none") != "none"]
    if offload and not torch.cuda.is_available():
        # DeepSpeed's offload path copies GPU gradients to CPU buffers; on a CPU-only machine it breaks
        raise ConvrecError(
            f"{path}: {' and '.join(offload)} moves state from GPU to CPU memory and needs CUDA GPUs; "
            "use ds_configs/zero2.json on this machine"
        )
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    for key in ("bf16", "fp16"):
        if isinstance(cfg.get(key), dict) and cfg[key].get("enabled") == "auto":
            cfg[key]["enabled"] = bf16 if key == "bf16" else False
    return cfg


def deepspeed_engine(model, optimizer, scheduler, config: dict):
    """Initialise the process group and wrap model/optimizer/scheduler in a DeepSpeed engine."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed is imported
    try:
        import deepspeed
    except ImportError:
        raise ConvrecError("--deepspeed needs the deepspeed package (pip install deepspeed)") from None
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine


def torchrun_command(nproc: int, *convrec_args: str) -> list[str]:
    """argv that runs `convrec ARGS` in ``nproc`` processes under torchrun (same interpreter)."""
    import sys

    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "-m",
        CLI_MODULE,
        *convrec_args,
    ]
