"""The multi-process plumbing (`convrec.train.distributed`): ZeRO-2 steps equal plain AdamW, the
process group's backend, timeout and single-process start, on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from convrec.train.distributed import backend, torchrun_command
from tests.conftest import run_cli, tiny_world

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["zero2.json", "zero2_offload.json"]
SFT_ARGS = ["--max-steps", "1", "--batch-size", "2", "--eval-every", "1", "--val-samples", "2", "--lr", "1e-3"]
LR = 1e-3
# Adam's first steps move a weight by about lr whatever its gradient: a micro-batch lost or counted twice
# shows as differences of order lr; summation order alone stays 100x below
ATOL = LR / 10


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("dist"))


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _assert_same_weights(expected: Path, got: Path, start: Path, steps: int) -> None:
    a, b, s = (load_file(p / "model.safetensors") for p in (expected, got, start))
    assert max(float((a[k] - s[k]).abs().max()) for k in a) > steps * LR / 2  # the step moved the weights
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < ATOL, f"ZeRO-2 weights differ from plain AdamW's by up to {worst:.2e}"


@pytest.fixture(scope="module")
def sft_reference(world):
    """One process, plain AdamW: the four micro-batches the two ZeRO-2 ranks share, accumulated."""
    run = world / "sft-plain"
    base = ["--data", world / "data", "--model", world / "model", "--out", run, *SFT_ARGS, "--grad-accum", "4"]
    proc = run_cli("sft", *base)
    assert proc.returncode == 0, proc.stderr
    return run / "last"


@pytest.mark.parametrize("config", CONFIGS)
def test_zero2_sft_step_equals_plain_adamw(world, sft_reference, config, tmp_path):
    """Two processes × two micro-batches, ZeRO-2 with and without CPU offload: one step lands on the
    weights one process reaches with plain AdamW over the same four micro-batches."""
    run = tmp_path / "z2"
    args = ["--data", str(world / "data"), "--model", str(world / "model"), "--out", str(run), *SFT_ARGS]
    _run(torchrun_command(2, "sft", *args, "--grad-accum", "2", "--deepspeed", f"ds_configs/{config}"))
    _assert_same_weights(sft_reference, run / "last", world / "model", 1)


@pytest.fixture(scope="module")
def rl_reference(world):
    run = world / "rl-plain"
    _run([sys.executable, "tests/zero2_rl_step.py", str(world / "data"), str(world / "model"), str(run), "4"])
    return run / "last"


@pytest.mark.parametrize("config", CONFIGS)
def test_zero2_rl_step_equals_plain_adamw(world, rl_reference, config, tmp_path):
    """Rank-GRPO at mu 2 (two optimiser steps), two micro-batches per process and a KL reference, on
    rollouts fixed in advance (tests/zero2_rl_step.py): ZeRO-2 over two processes = plain AdamW in one."""
    run = tmp_path / "z2"
    script = [str(world / "data"), str(world / "model"), str(run), "2", f"ds_configs/{config}"]
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "tests/zero2_rl_step.py", *script])
    _assert_same_weights(rl_reference, run / "last", world / "model", 2)


def test_deepspeed_in_one_process_without_a_launcher(world, tmp_path):
    """`convrec sft --deepspeed` started directly (the pipeline file's recipe): a group of one, not
    DeepSpeed's MPI discovery (which wanted mpi4py)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    base = ["--data", world / "data", "--model", world / "model", "--out", tmp_path / "r", *SFT_ARGS]
    proc = run_cli("sft", *base, "--deepspeed", ROOT / "ds_configs" / "zero2.json", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "r" / "last" / "model.safetensors").exists()


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**clean, **env},
    )  # fmt: skip


def test_statistics_skip_a_group_of_one_a_library_started():
    """vLLM's in-process executor starts an nccl group of size 1; nccl has no CPU backend, which a
    ``cuda:gloo`` group reproduces on CPU. A one-process run has nothing to average: no collective."""
    proc = _python(
        """
        import torch.distributed as dist
        from convrec.train import distributed
        dist.init_process_group("cuda:gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
        print(distributed.mean_across_ranks_many([1.0, 2.5]), distributed.mean_across_ranks(3.0))
        """
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["[1.0,", "2.5]", "3.0"]


def test_the_group_reduces_cpu_statistics_beside_nccl_and_waits_long():
    """On GPUs the group maps CPU tensors to gloo (the step statistics) and CUDA tensors to nccl;
    its timeout outlasts rank 0's validation and saves (nccl's default is 10 minutes)."""
    assert backend(cuda=True) == "cpu:gloo,cuda:nccl" and backend(cuda=False) == "gloo"
    proc = _python(
        """
        import torch, torch.distributed as dist
        from convrec.train import distributed
        distributed.init(timeout_min=distributed.TIMEOUT_MIN)
        options = dist.group.WORLD._get_backend(torch.device("cpu")).options
        print(dist.get_world_size(), int(options._timeout.total_seconds()))
        """
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    from convrec.train.distributed import TIMEOUT_MIN

    assert proc.stdout.split() == ["1", str(TIMEOUT_MIN * 60)]
    assert not torch.distributed.is_initialized()  # the test process itself never joined a group


@pytest.mark.slow  # three two-process RL runs: about 4 minutes on a busy 2-core machine
def test_zero2_rl_kill_and_resume_matches_uninterrupted(sft_world, tmp_path):
    """Each rank samples its own prompts, so each rank's RNG stream is its own: a resumed two-process
    run restores every rank's generator (not rank 0's everywhere) and logs what the uninterrupted one did."""
    from tests.conftest import kill_after_first_checkpoint
    from tests.test_rl import RL_ARGS

    args = ["--model", str(sft_world / "sft" / "best"), "--data", str(sft_world / "data"), "--max-steps", "4"]
    cmd = torchrun_command(2, "rl", *args, "--eval-every", "2", "--deepspeed", "ds_configs/zero2.json", *RL_ARGS)
    _run([*cmd, "--out", str(tmp_path / "full")])
    run = tmp_path / "killed"
    kill_after_first_checkpoint([*cmd, "--out", str(run)], run, cwd=ROOT, timeout=600)
    saved = torch.load(run / "last" / "trainer_state.pt", weights_only=False)
    assert saved["step"] == 2 and len(saved["rng"]) == 2
    _run([*cmd, "--out", str(run), "--resume"])
    keys = ("loss", "reward_mean", "kl", "entropy")
    logs = [(r / "metrics.jsonl").read_text().splitlines() for r in (tmp_path / "full", run)]
    expected, got = ([x[k] for x in map(json.loads, lines) if "loss" in x for k in keys] for lines in logs)
    assert len(got) == 4 * len(keys) and got == pytest.approx(expected, rel=1e-5, abs=1e-6)
