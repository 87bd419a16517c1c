# convrec developer entry points. `make install` once, then `make demo` / `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0

.PHONY: install install-gpu constraints-gpu gpu-smoke test test-fast lint bench loadtest demo clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(BIN)/uv: $(BIN)/python
	$(BIN)/pip install -q uv

# torch first and pinned with pip (an unpinned torch would pull a multi-GB CUDA build; pip finds the local
# CPU wheel), then the rest with uv (parallel download and unpacking: ~15 s where pip took ~110 s), torch
# pinned again so nothing can replace it, every other version from constraints.txt (the demo's numbers
# moved between two days when transformers did). pip's serial byte-compilation is half of torch's install: it is
# skipped and torch compiled in parallel instead (a few of torch's test files are 3.12 syntax, hence || true).
# The stamp is named after the pin: a new pin installs and compiles again, a rerun skips both.
TORCH_STAMP := $(VENV)/.installed-$(TORCH_PIN)
$(TORCH_STAMP): $(BIN)/uv
	$(BIN)/pip install -q --no-compile $(TORCH_PIN)
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib/python*/site-packages/torch > /dev/null || true
	touch $@

install: $(TORCH_STAMP)
	$(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode -c constraints.txt $(TORCH_PIN) -e '.[dev]'

# A CUDA machine (linux x86_64): vLLM and the CUDA torch it pins, every version from constraints-gpu.txt
# (docs/gpu.md). No CPU-torch stamp: vLLM brings its own torch.
install-gpu: $(BIN)/uv
	$(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode -c constraints-gpu.txt -e '.[vllm,dev]'

# Resolve constraints-gpu.txt again after a dependency change (reaches the package index).
constraints-gpu: $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml --extra vllm --extra dev --python-platform x86_64-unknown-linux-gnu \
		--python-version 3.11 --custom-compile-command "make constraints-gpu" -q -o constraints-gpu.txt

# One CUDA GPU: sft (LoRA and full, ZeRO-2, bf16), rl, generate, eval and one served request on the
# Qwen2.5-0.5B-shaped student (and Gemma 3 270M); prints step times, tokens/s, peak GPU memory.
# Without CUDA: one line, exit 2.
gpu-smoke:
	$(BIN)/python bench/gpu_smoke.py

test: install
	$(BIN)/pytest -q

test-fast:
	$(BIN)/pytest -q -m "not slow"

lint:
	$(BIN)/ruff check convrec tests bench
	$(BIN)/ruff format --check convrec tests bench

bench:
	$(BIN)/python bench/bench_foundation.py
	$(BIN)/python bench/bench_eval.py
	$(BIN)/python bench/bench_sft.py
	$(BIN)/python bench/bench_serve.py
	$(BIN)/python bench/bench_remap.py
	$(BIN)/python bench/bench_decoding.py
	$(BIN)/python bench/bench_rl.py
	$(BIN)/python bench/bench_real_model.py

# Bounded loopback load test of `convrec serve` (500 requests, 32 concurrent); exits 1 on any 5xx.
loadtest:
	$(BIN)/python bench/load_serve.py

# The embedded default, the whole pipeline: synthetic world -> Stage 1 -> sft -> rl -> eval -> report
# (no network, no GPU; 4.3 minutes with the install on a 2-core AVX-512 Xeon, 8.2 on a 2-core AVX2 EPYC with the
# previous SFT/RL budget; measured from clean clones). Rerunning skips what is done in out/demo.
# `make demo SEED=1` builds another world and runs everything on it in out/demo-seed1.
SEED ?= 0
demo: install
	$(BIN)/convrec demo --out $(if $(filter 0,$(SEED)),out/demo,out/demo-seed$(SEED)) --size small --seed $(SEED)

clean:
	rm -rf out .pytest_cache .ruff_cache
