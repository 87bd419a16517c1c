"""Catalog-constrained sampling inside vLLM: a V1 logits processor over the hf engine's trie walk.

vLLM V1 applies batch-level logits processors to its persistent batch: before each forward it
reports which requests joined (with their `SamplingParams` and a live reference to their output
token list), left, or moved between batch rows (`update_state`), then hands over the (rows × V)
logits (`apply`). Here a request whose ``extra_args`` carry `EXTRA_KEY` (the row's `RowConstraint`:
list length and excluded items) gets a `RowState` walk of the catalog trie, advanced over the tokens
it has sampled since the last step, and its logits are masked with `mask_scores` to
`RowState.next_ids`: the very objects `HFEngine`'s constrained loop and `CatalogConstraints.replay`
use, so a vLLM sample is drawn from the masked policy the loss scores it under (masking before
vLLM's temperature and top-p equals masking after it). Requests without the key pass untouched.

vLLM constructs the processor itself (``LLM(logits_processors=[CatalogMaskProcessor])``) with its own
arguments only, so the trie is handed over through `use_trie` before the engine starts; the engine
core runs in the training process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), which makes that possible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from convrec.decoding.constrained import CatalogTrie, RowConstraint, RowState, mask_scores

try:  # the base class only where vLLM is installed; the logic is tested on CPU without it
    from vllm.v1.sample.logits_processor import LogitsProcessor as _Base
except ImportError:  # pragma: no cover - depends on the machine
    _Base = object

EXTRA_KEY = "convrec_catalog"
_TRIE: CatalogTrie | None = None


def use_trie(trie: CatalogTrie) -> None:
    """The catalog trie every `CatalogMaskProcessor` of this process walks."""
    global _TRIE
    _TRIE = trie


def extra_args(spec: RowConstraint) -> dict:
    """``SamplingParams.extra_args`` asking for a catalog-constrained list (plain values: vLLM may copy them)."""
    return {EXTRA_KEY: {"k": spec.k, "exclude": sorted(spec.exclude)}}


class _Walk:
    """One request's trie walk and the output list vLLM keeps appending to."""

    __slots__ = ("state", "output", "seen")

    def __init__(self, state: RowState, output: list[int]):
        self.state, self.output, self.seen = state, output, 0

    def catch_up(self) -> None:
        while self.seen < len(self.output):
            self.state.advance(self.output[self.seen])
            self.seen += 1


class CatalogMaskProcessor(_Base):
    """vLLM V1 logits processor: catalog-constrained rows, keyed by their persistent-batch index."""

    def __init__(self, vllm_config=None, device: torch.device | None = None, is_pin_memory: bool = False):
        self.rows: dict[int, _Walk] = {}

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        spec = (getattr(sampling_params, "extra_args", None) or {}).get(EXTRA_KEY)
        if spec is not None and _TRIE is None:
            raise ValueError("catalog-constrained sampling needs the catalog trie (vllm_constraints.use_trie)")

    def is_argmax_invariant(self) -> bool:
        return False  # masking changes the argmax

    def update_state(self, batch_update) -> None:
        """Apply vLLM's batch changes in its documented order (removed, added, moved), then advance every
        walk over the tokens sampled since the last step."""
        if batch_update is not None:
            for index in batch_update.removed:
                self.rows.pop(index, None)
            for index, params, _prompt, output in batch_update.added:
                self._add(index, params, output)
            for a, b, direction in batch_update.moved:
                self._move(a, b, direction)
        for walk in self.rows.values():
            walk.catch_up()

    def _add(self, index: int, params, output: list[int]) -> None:
        spec = (getattr(params, "extra_args", None) or {}).get(EXTRA_KEY)
        if spec is None:  # a plain request takes the row over
            self.rows.pop(index, None)
            return
        row = RowConstraint(k=int(spec["k"]), exclude=frozenset(spec["exclude"]))
        self.rows[index] = _Walk(RowState(_TRIE, row), output)

    def _move(self, a: int, b: int, direction) -> None:
        if direction.name == "SWAP":
            wa, wb = self.rows.pop(a, None), self.rows.pop(b, None)
            if wa is not None:
                self.rows[b] = wa
            if wb is not None:
                self.rows[a] = wb
            return
        walk = self.rows.pop(a, None)  # one-way: a's request now sits at b, replacing whatever was there
        if walk is None:
            self.rows.pop(b, None)
        else:
            self.rows[b] = walk

    def allowed(self, batch_size: int, device: torch.device) -> Sequence[torch.Tensor | None]:
        """Per batch row the ids it may sample next (None: unconstrained)."""
        out: list[torch.Tensor | None] = [None] * batch_size
        for index, walk in self.rows.items():
            if index < batch_size:
                out[index] = walk.state.next_ids(device)
        return out

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        return mask_scores(logits, self.allowed(logits.shape[0], logits.device))
