"""The process settings every `convrec` command starts with (`convrec.runtime`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from convrec.runtime import keep_freed_memory

# a training step's pattern: a parameter updated from large temporaries that each step allocates and frees
STEPS = """
import resource, sys, torch
from convrec.runtime import keep_freed_memory
print(keep_freed_memory(), file=sys.stderr)
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
w = torch.randn(2**22)
for i in range(6):
    if i == 2:
        start = faults()
    g = torch.ones(2**24) * w.sum()
    h = g * 2
    w += h[: 2**22] * 0
    del g, h
print(faults() - start)
"""


def _page_faults(keep: bool) -> int:
    env = {**os.environ, "CONVREC_KEEP_FREED_MEMORY": "1" if keep else "0", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", STEPS], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings: Linux only")
def test_freed_blocks_are_kept_for_the_next_step():
    """With glibc's defaults every step faults its 64 MiB temporaries in again; kept, most steps reuse them."""
    if not keep_freed_memory():
        pytest.skip("this libc has no mallopt (not glibc)")
    kept, default = _page_faults(True), _page_faults(False)
    assert kept * 2 < default, (kept, default)


def test_the_setting_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("CONVREC_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
