"""The `vllm` rollout engine: vLLM colocated with the trainer, one engine per process (GPU only).

Under torchrun every rank runs its own engine on its own GPU, as TRL's colocate mode does: vLLM's
``external_launcher`` executor joins the launcher's ranks instead of spawning workers (without it
every rank's engine would take GPU 0), each rank's engine gets its own seed, and the trainer's device
is set back afterwards. ``gpu_memory_utilization`` (the share of the GPU vLLM may take: weights plus
KV cache) and ``max_model_len`` are the run's flags. With sleep mode the engine frees its weights and
KV cache while the policy updates (``sleep(level=2)``) and wakes to reload the new weights before the
next rollouts: the update's activations and optimiser state get that memory back.

Weights are loaded in place through a worker extension (`VLLMWeightSync`), under the names vLLM's
model loader reads: a LoRA policy is merged first and its peft names mapped back to the base
model's; a tied output head is left out (vLLM ties it to the embedding itself). Every request's
sampling seed is drawn from the trainer's RNG, which checkpoints save per rank, so a resumed run
samples what an uninterrupted one would have. Catalog-constrained rollouts go through
`vllm_constraints.CatalogMaskProcessor`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Sequence

import torch

from convrec.decoding.constrained import CatalogConstraints, RowConstraint
from convrec.errors import ConvrecError
from convrec.train import distributed, lora, vllm_constraints

SEED_RANGE = 2**31 - 1
_PEFT_PREFIX = "base_model.model."
_PEFT_SKIP = ("lora_", "original_module", "token_adapter")
_PEFT_STRIP = (".base_layer", "modules_to_save.default.")


class VLLMWeightSync:
    """vLLM worker extension (``worker_extension_cls``): loads the policy's weights in place."""

    def convrec_load_weights(self, named: list[tuple[str, torch.Tensor]]) -> None:
        self.model_runner.model.load_weights(weights=named)


def llm_kwargs(
    model_path: str, *, gpu_memory_utilization: float, max_model_len: int, seed: int, sleep: bool, constrained: bool
) -> dict:
    """The `vllm.LLM` arguments of this process's engine."""
    kwargs = {
        "model": str(model_path),
        "gpu_memory_utilization": gpu_memory_utilization,
        "max_model_len": max_model_len,
        "enable_prefix_caching": True,  # the G samples of a prompt share its prefill
        "seed": seed + distributed.rank(),  # ranks sample different lists from equal prompts
        "enable_sleep_mode": sleep,
        "worker_extension_cls": f"{__name__}.VLLMWeightSync",
    }
    if distributed.world_size() > 1:
        kwargs["distributed_executor_backend"] = "external_launcher"  # this rank's GPU (LOCAL_RANK), no workers
    if constrained:
        kwargs["logits_processors"] = [vllm_constraints.CatalogMaskProcessor]
    return kwargs


def vllm_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs under the base model's names; a LoRA model's adapters merged in. The
    caller keeps the peft model merged while it reads them (`merged`)."""
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        if lora.is_peft(model):
            if any(s in name for s in _PEFT_SKIP):
                continue
            name = name.removeprefix(_PEFT_PREFIX)
            for s in _PEFT_STRIP:
                name = name.replace(s, "")
        if tied and name == "lm_head.weight":
            continue
        yield name, tensor.detach()


class merged:
    """``with merged(model):`` a peft model with its adapters folded into the base weights, unfolded after."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        if lora.is_peft(self.model):
            self.model.merge_adapter()
        return self.model

    def __exit__(self, *exc) -> None:
        if lora.is_peft(self.model):
            self.model.unmerge_adapter()


class VLLMEngine:
    """A colocated vLLM engine sampling from a copy of the policy (GPU only)."""

    def __init__(
        self,
        model_path: str,
        *,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int = 2048,
        seed: int = 0,
        sleep: bool = True,
        constraints: CatalogConstraints | None = None,
    ):
        if importlib.util.find_spec("vllm") is None:
            raise ConvrecError(
                "--engine vllm needs vLLM (make install-gpu on a CUDA machine, docs/gpu.md); use --engine hf"
            )
        if not torch.cuda.is_available():
            raise ConvrecError("--engine vllm needs a CUDA GPU; use --engine hf on this machine")
        # the engine core in this process: weight syncs hand tensors over, the logits processor sees the trie
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        if constraints is not None:
            vllm_constraints.use_trie(constraints.trie)
        self.sleep_mode, self.policy, self.stale = sleep, None, False
        self.llm = LLM(
            **llm_kwargs(
                model_path, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, seed=seed,
                sleep=sleep, constrained=constraints is not None,
            ),
            dtype="bfloat16" if torch.cuda.is_bf16_supported() else "float16",
        )  # fmt: skip
        torch.cuda.set_device(distributed.local_rank())  # the trainer's GPU, whatever vLLM selected
        self.asleep = 0  # the sleep level the engine is in (0: awake)

    def sync_weights(self, model) -> None:
        """Remember the updated policy; its weights are loaded when the next rollouts need them
        (after the update, so a sleeping engine stays asleep through it)."""
        self.policy, self.stale = model, True

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        if self.stale or self.asleep == 2:  # a level-2 sleep dropped the weights: reload them too
            with merged(self.policy) as m:
                self.llm.collective_rpc("convrec_load_weights", args=(list(vllm_weights(m)),))
            self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
            self.stale = False
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = 0

    def generate(self, prompts: list[list[int]], cfg, rows: Sequence[RowConstraint] | None = None) -> list[list[int]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self.asleep or self.stale:
            self._wake()
        stops = list(cfg.stop_ids) or [self.llm.get_tokenizer().eos_token_id]
        params = [
            SamplingParams(
                n=cfg.group_size,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_tokens=cfg.max_new_tokens,
                stop_token_ids=stops,  # vLLM stops on the model's EOS too; either stays in token_ids
                seed=request_seed(),
                extra_args=vllm_constraints.extra_args(rows[i]) if rows is not None else None,
            )
            for i in range(len(prompts))
        ]
        results = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        if self.sleep_mode:  # level 2 frees the weights too, once there is a policy to reload them from
            self.asleep = 2 if self.policy is not None else 1
            self.llm.sleep(level=self.asleep)
        # token_ids are exactly what was sampled, the stop token included: nothing is appended
        return [list(c.token_ids) for r in results for c in r.outputs]


def request_seed() -> int:
    """A request's sampling seed, drawn from the trainer's (checkpointed, per-rank) RNG."""
    return (int(torch.randint(SEED_RANGE, ())) + distributed.rank()) % SEED_RANGE
