"""Training precision: fp32 master weights, bf16 compute where the hardware runs it natively.

One policy for sft and rl (and whatever else runs a model forward under training):
- the weights the optimiser updates are always float32 (`MASTER_DTYPE`): AdamW steps of lr ~1e-6 on
  bf16 weights round away (bf16 keeps 8 mantissa bits, so w + Δ == w whenever |Δ| < |w|·2⁻⁹), so a
  bf16 checkpoint is upcast when it is loaded for training. DeepSpeed with ``"bf16": {"enabled":
  true}`` keeps its own fp32 master copy, so there the model may be handed over as it is;
- matrix products run under ``torch.autocast(dtype=bfloat16)`` when ``--precision bf16``, or with
  ``auto`` on a CUDA GPU with bf16, or on a CPU with native bf16 instructions (AVX-512 BF16 / AMX)
  for a model large enough that it pays (`AUTO_CPU_MIN_PARAMS`, measured in bench/bench_real_model.py:
  the 1.8M-parameter tiny student is faster in fp32, Gemma 3 270M about twice as fast in bf16).
"""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from convrec.errors import ConvrecError

CHOICES = ("auto", "fp32", "bf16")
MASTER_DTYPE = "float32"
AUTO_CPU_MIN_PARAMS = 50_000_000


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX-BF16 on this CPU (Linux /proc/cpuinfo flags), and oneDNN built with bf16."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags)) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass(frozen=True)
class Precision:
    """Where the forward runs and in which dtype its matrix products are computed (None: fp32)."""

    device_type: str
    compute: torch.dtype | None

    @property
    def name(self) -> str:
        return "bf16" if self.compute == torch.bfloat16 else "fp32"

    def autocast(self):
        if self.compute is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.compute)


def resolve(choice: str, model=None, device: torch.device | str | None = None) -> Precision:
    """The precision a ``--precision`` choice means for ``model`` on ``device``."""
    if choice not in CHOICES:
        raise ConvrecError(f"--precision {choice}: choose one of {', '.join(CHOICES)}")
    device = torch.device(device if device is not None else (model.device if model is not None else "cpu"))
    kind = device.type
    if choice == "fp32":
        return Precision(kind, None)
    if kind == "cuda":
        supported = torch.cuda.is_bf16_supported()
    elif kind == "cpu":
        supported = cpu_has_native_bf16()
    else:
        supported = False
    if choice == "bf16":
        if kind not in ("cuda", "cpu"):
            raise ConvrecError(f"--precision bf16: no bf16 autocast on {kind}")
        return Precision(kind, torch.bfloat16)  # asked for: emulated bf16 on an older CPU still runs
    if not supported:
        return Precision(kind, None)
    if kind == "cpu" and (model is None or _parameters(model) < AUTO_CPU_MIN_PARAMS):
        return Precision(kind, None)
    return Precision(kind, torch.bfloat16)


def _parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def deepspeed_bf16(config: str | Path | dict | None) -> bool:
    """Whether a DeepSpeed config keeps fp32 master weights itself (``bf16.enabled``)."""
    if config is None:
        return False
    if not isinstance(config, dict):
        try:
            config = json.loads(Path(config).read_text())
        except (OSError, ValueError):
            return False
    return bool((config.get("bf16") or {}).get("enabled") is True)


def training_dtype(deepspeed: str | Path | dict | None = None) -> str | None:
    """The dtype to load a model in for training: fp32 masters, or the checkpoint's own under DeepSpeed bf16."""
    return None if deepspeed_bf16(deepspeed) else MASTER_DTYPE
