"""The output head over the allowed token ids only: logits where they can matter.

Under the catalog mask the policy is the masked one, π_c(v | h) = softmax over the allowed ids A of
z_v, with z_v = softcap(w_v·h) / τ. Every token outside A gets probability 0 whatever its logit,
so computing z over A alone gives the same distribution, log-probabilities and gradients as the
full head masked to A: exact, not an approximation. For Gemma 3 270M the full head is 262,144 rows
(168M of its 268M parameters); a catalog position allows at most a few thousand ids.

A batch's rows allow different ids. `RestrictedHead` scores the union U of the rows' sets with one
matrix product (N × U instead of N × V), then masks each row to its own set; ``softcap`` is Gemma's
``final_logit_softcapping`` (c·tanh(z / c), identity without it), what the model's own forward applies
after its ``lm_head``. This is the one place the project turns hidden states into masked logits:
constrained decoding (`loop.decode_constrained`), constrained rollouts and their scoring
(`convrec.train.logits`), and the SFT loss restricted to the catalog.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def unwrap(model):
    """The transformers model inside a DeepSpeed engine or a peft wrapper (LoRA layers stay injected)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "peft_config") else model


@dataclass(frozen=True)
class RestrictedLogits:
    """Masked logits over the union of a batch's allowed ids: ``z`` (N × U, −inf where a row does not
    allow the id), ``ids`` (U) the vocabulary id of each column."""

    z: torch.Tensor
    ids: torch.Tensor

    def log_softmax(self) -> torch.Tensor:
        return torch.log_softmax(self.z, dim=-1)

    def column(self, tokens: torch.Tensor) -> torch.Tensor:
        """The column of each row's token id (N); every token must be one of ``ids``."""
        return torch.searchsorted(self.ids, tokens)

    def to_vocab(self, columns: torch.Tensor) -> torch.Tensor:
        return self.ids[columns]


class RestrictedHead:
    """A model's output head (weight rows, bias, softcap), evaluated over chosen ids only."""

    def __init__(self, model) -> None:
        inner = unwrap(model)
        self.body = inner.get_decoder()
        self.module = inner.get_output_embeddings()
        self.softcap = getattr(inner.config, "final_logit_softcapping", None)
        # a plain Linear can be sliced by rows; any other head (an adapter wrapping it) runs whole, then sliced
        self.sliceable = type(self.module) is torch.nn.Linear

    @property
    def vocab_size(self) -> int:
        return self.module.weight.shape[0]

    def _raw(self, h: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        if ids is None:
            return self.module(h)
        if not self.sliceable:
            return self.module(h)[..., ids]
        bias = self.module.bias
        return F.linear(h, self.module.weight[ids], None if bias is None else bias[ids])

    def logits(self, h: torch.Tensor, ids: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        """softcap(W[ids] h) / τ in fp32 (N × |ids|; the full vocabulary when ``ids`` is None)."""
        z = self._raw(h, ids).float()
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z / temperature if temperature != 1.0 else z

    def restricted(
        self, h: torch.Tensor, allowed: Sequence[torch.Tensor], temperature: float = 1.0
    ) -> RestrictedLogits:
        """Each row of ``h`` (N × H) scored over its ``allowed`` ids only, as `RestrictedLogits`."""
        if len(allowed) != h.shape[0]:
            raise ValueError(f"allowed has {len(allowed)} entries for {h.shape[0]} rows")
        ids, blocked = union_mask(allowed, h.device)
        z = self.logits(h, ids, temperature).masked_fill(blocked, float("-inf"))
        return RestrictedLogits(z, ids)


def union_mask(allowed: Sequence[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """The sorted union U of the rows' id sets and a (rows × |U|) bool mask, True where a row's set
    lacks the column's id."""
    flat = torch.cat([a.to(device) for a in allowed])
    ids, inverse = torch.unique(flat, sorted=True, return_inverse=True)
    lengths = torch.tensor([len(a) for a in allowed], device=device)
    rows = torch.repeat_interleave(torch.arange(len(allowed), device=device), lengths)
    blocked = torch.ones(len(allowed), len(ids), dtype=torch.bool, device=device)
    blocked[rows, inverse] = False
    return ids, blocked
