"""DeepSpeed ZeRO-2 across processes (torchrun / deepspeed launcher), gloo on CPU, nccl on GPU.

Single-process runs without --deepspeed never import deepspeed. In a multi-process run every rank
trains on its own slice of each global batch; rank 0 alone validates, logs and writes
`save_pretrained` folders (ZeRO-2 partitions optimizer state and gradients, not parameters, so
rank 0 holds the full model).

The process group is started here (`init`), not by DeepSpeed: on GPUs it maps CPU tensors to gloo
and CUDA tensors to nccl (``cpu:gloo,cuda:nccl``), so the run's CPU statistics reduce on the same
group DeepSpeed's gradients use (nccl alone has no CPU backend); a run outside a launcher gets the
single-process rendezvous variables instead of DeepSpeed's MPI discovery; and the collective
timeout is the run's, long enough for rank 0's validation and saves while the others wait.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import torch

from convrec import CLI_MODULE
from convrec.errors import ConvrecError

TIMEOUT_MIN = 120  # rank 0 validates and saves while the others wait in a collective (nccl's default: 10)
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def _joined() -> bool:
    """Whether this run's processes share a group. A group some library started inside one process
    (vLLM's executor makes an nccl group of size 1) is not the run's: nothing to reduce over."""
    return world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def backend(cuda: bool) -> str:
    """The process group's backend: CPU tensors on gloo everywhere, CUDA tensors on nccl."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def init(timeout_min: float = TIMEOUT_MIN) -> None:
    """Start the default process group (idempotent), setting each rank's GPU first."""
    if torch.distributed.is_initialized():
        return
    if not all(k in os.environ for k in LAUNCH_ENV):  # one process, no launcher: a group of one
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    torch.distributed.init_process_group(backend=backend(cuda), timeout=timedelta(minutes=timeout_min))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def barrier() -> None:
    if _joined():
        torch.distributed.barrier()


def mean_across_ranks(value: float) -> float:
    return mean_across_ranks_many([value])[0]


def mean_across_ranks_many(values: list[float]) -> list[float]:
    """Element-wise mean of a list of floats over all processes, in one all-reduce."""
    if not _joined():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    torch.distributed.all_reduce(t)
    return (t / world_size()).tolist()


def gather(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not _joined():
        return [obj]
    out: list = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _collective_device() -> torch.device:
    """CPU where the group has a CPU backend (gloo, or the mixed group `init` starts), else this rank's GPU."""
    if "gloo" in str(torch.distributed.get_backend()):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def resolve_config(path: str | Path, *, micro_batch: int, grad_accum: int, max_grad_norm: float) -> dict:
    """Read a DeepSpeed JSON config and fill its "auto" values from the run's own settings. CPU offload
    runs on CPU-only machines too (DeepSpeed's CPU accelerator): the correctness tests use it."""
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
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    for key in ("bf16", "fp16"):
        if isinstance(cfg.get(key), dict) and cfg[key].get("enabled") == "auto":
            cfg[key]["enabled"] = bf16 if key == "bf16" else False
    return cfg


class Scored(torch.nn.Module):
    """The module a training step calls: ``scored(fn, *args)`` runs ``fn(model, *args)`` (a scoring
    function: `logits.completion_loss`, `rl.token_logps`). Under DeepSpeed it is the module the engine
    wraps, so every micro-batch runs through `engine.forward`, whose output hooks start DeepSpeed's
    backward (ZeRO-2 reads the accumulation-boundary flag there; scoring the inner model directly
    skipped them, and with CPU offload most gradients never reached the fp32 partitions)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


def deepspeed_engine(model, optimizer, scheduler, config: dict, timeout_min: float = TIMEOUT_MIN):
    """Start the process group (`init`) and wrap `Scored(model)`, optimizer and scheduler in a DeepSpeed
    engine: call it as ``engine(fn, *args)``, like `Scored`."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed is imported
    try:
        import deepspeed
    except ImportError:
        raise ConvrecError("--deepspeed needs the deepspeed package (pip install deepspeed)") from None
    init(timeout_min)
    deepspeed.init_distributed(dist_backend=backend(torch.cuda.is_available()), timeout=timedelta(minutes=timeout_min))
    engine, _, _, _ = deepspeed.initialize(
        model=Scored(model), optimizer=optimizer, lr_scheduler=scheduler, config=config
    )
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
