"""Process-wide settings every `convrec` command starts with.

`keep_freed_memory`: glibc's malloc serves every block over its mmap threshold (at most 32 MiB) with a
fresh `mmap` and gives it back with `munmap` when it is freed, so a training step that allocates and
frees the same gigabyte-sized tensors (a 262k-row embedding's dense gradient, its AdamW update, the
logits of a long batch) has the kernel zero and fault in every page again, step after step. On the
2-core machine of docs/results.md that was most of a Gemma step's CPU time: three full fine-tuning
steps of Gemma 3 270M took 9.3 s of system time (2.1M page faults) and 0.4 s (164k) with the blocks
kept. The settings make malloc take large blocks from its heap and keep what is freed there for the
next step (the process keeps its peak memory, which training does anyway).
``CONVREC_KEEP_FREED_MEMORY=0`` leaves glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc <malloc.h>
_KEEP = 2**31 - 1  # mallopt takes an int: trim only a free top of heap over 2 GiB


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed large blocks (True when it was asked). A no-op elsewhere."""
    if os.environ.get("CONVREC_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, _KEEP))
