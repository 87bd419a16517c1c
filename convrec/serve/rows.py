"""One request's row in a batch: the `Job` and the hooks that decode it row by row.

`LogSoftmax`, `Adjust` and `RowStopper` serve `model.generate` (free text) as a logits processor and a
stopping criterion; `RowStopper` is also the restricted-head loop's observer
(`convrec.decoding.loop.Observer`) for constrained rows, with `Adjust` applied over the allowed ids.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, StoppingCriteria

from convrec.decoding.constrained import RowConstraint
from convrec.decoding.head import RestrictedLogits


@dataclass
class Job:
    prompt: list[int]
    constraint: RowConstraint | None
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    deadline: float  # time.monotonic()
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    on_token: Callable[[int | None], None] | None = None  # streaming: a token id, then None at the end
    stop: tuple[str, ...] = ()  # stop sequences: the row ends once its text holds one
    presence_penalty: float = 0.0  # OpenAI's: minus this from every token already generated...
    frequency_penalty: float = 0.0  # ... and this times its count
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    top_logprobs: int = 0  # > 0: keep that many alternatives (token id, log-prob) per generated token
    seed: int | None = None  # sampling only
    cancelled: bool = False
    # filled by the worker
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    alternatives: list[list[tuple[int, float]]] = field(default_factory=list)  # with top_logprobs
    items: list[int] | None = None  # catalog rows, for constrained jobs
    complete: bool = True  # constrained: stopped between lines
    finish_reason: str = "stop"  # "stop" | "length" | "timeout" | "cancelled"
    batch_size: int = 0

    @property
    def sampling_key(self) -> tuple:
        if not self.do_sample:
            return (False,)
        alone = id(self) if self.seed is not None else None  # shared draws would depend on the batch
        return (True, self.temperature, self.top_p, alone)

    @property
    def adjusts_logits(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)


class LogSoftmax(LogitsProcessor):
    """Last in the list: keeps the final step distribution so each chosen token gets its log-probability."""

    def __init__(self) -> None:
        self.last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.last = torch.log_softmax(scores, dim=-1)
        return scores


class Adjust(LogitsProcessor):
    """OpenAI's presence and frequency penalties and `logit_bias`, row by row (constrained rows: over
    their allowed ids):
    ``logit[t] -= frequency_penalty * count[t] + presence_penalty * (count[t] > 0) - bias[t]``, counting
    the tokens this call generated (the prompt's are not penalised, as OpenAI's "so far" means)."""

    def __init__(self, jobs: list[Job], prompt_len: int) -> None:
        self.prompt_len = prompt_len
        self.presence = torch.tensor([j.presence_penalty for j in jobs])
        self.frequency = torch.tensor([j.frequency_penalty for j in jobs])
        self.biases = [j.logit_bias for j in jobs]

    def adjust(self, z: torch.Tensor, ids: torch.Tensor, generated: list[list[int]]) -> torch.Tensor:
        """The same adjustment over a restricted head's columns ``ids`` (z: rows × ids), from each row's
        generated tokens; masked entries stay −inf."""
        z = z.clone()
        for r, tokens in enumerate(generated):
            pres, freq, bias = float(self.presence[r]), float(self.frequency[r]), self.biases[r]
            if tokens and (pres or freq):
                counts = (ids[:, None] == torch.tensor(tokens, device=ids.device)[None, :]).sum(1).to(z.dtype)
                z[r] -= counts * freq + (counts > 0).to(z.dtype) * pres
            for tok, value in bias.items():
                col = int(torch.searchsorted(ids, torch.tensor(tok, device=ids.device)))
                if col < len(ids) and int(ids[col]) == tok:
                    z[r, col] += value
        return z

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        generated = input_ids[:, self.prompt_len :]
        if generated.shape[1] and (self.presence.any() or self.frequency.any()):
            counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
            freq, pres = (x.to(scores.device, scores.dtype)[:, None] for x in (self.frequency, self.presence))
            scores -= counts * freq + (counts > 0).to(scores.dtype) * pres
        for r, bias in enumerate(self.biases):
            if bias:
                ids = torch.tensor(list(bias), device=scores.device)
                scores[r, ids] += torch.tensor(list(bias.values()), device=scores.device, dtype=scores.dtype)
        return scores


class RowStopper(StoppingCriteria):
    """Collects each row's tokens (streaming them) and stops a row at a stop token (any token that ends a
    turn), one of its stop sequences, its budget, deadline or cancel."""

    def __init__(
        self, jobs: list[Job], logp: LogSoftmax | None, stops: list[int], decode: Callable, adjuster=None
    ) -> None:
        self.jobs, self.logp, self.stops, self.decode = jobs, logp, set(stops), decode
        self.adjuster: Adjust | None = adjuster
        self.active = [True] * len(jobs)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        """`model.generate`'s stopping criterion: the column it just generated."""
        last = input_ids[:, -1:]
        logp = self.logp.last
        lps = logp.gather(1, last).squeeze(1).tolist() if logp is not None else [0.0] * len(self.jobs)
        self._take(last.squeeze(1).tolist(), lps, lambda r, n: top_alternatives(logp[r], n) if logp is not None else [])
        return torch.tensor([not a for a in self.active], dtype=torch.bool, device=input_ids.device)

    def take(self, tokens: list[int | None], scored: RestrictedLogits | None) -> list[bool]:
        """The restricted-head loop's observer (`convrec.decoding.loop.Observer`): a forced token has
        log-probability 0 (the mask left it alone), a drawn one its log-softmax over the row's allowed ids."""
        if scored is None:
            lps = [0.0] * len(tokens)
            self._take(tokens, lps, lambda r, n: [(tokens[r], 0.0)])
        else:
            logp = scored.log_softmax()
            drawn = torch.tensor([t if t is not None else int(scored.ids[0]) for t in tokens], device=logp.device)
            lps = logp.gather(1, scored.column(drawn)[:, None]).squeeze(1).tolist()
            self._take(tokens, lps, lambda r, n: [(int(scored.ids[i]), v) for i, v in top_alternatives(logp[r], n)])
        return [not a for a in self.active]

    def adjust(self, z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return z if self.adjuster is None else self.adjuster.adjust(z, ids, [j.tokens for j in self.jobs])

    def _take(self, toks: list[int | None], lps: list[float], alternatives: Callable) -> None:
        now = time.monotonic()
        for r, job in enumerate(self.jobs):
            if not self.active[r] or toks[r] is None:
                continue
            if toks[r] in self.stops:
                self._stop(r, "stop")
                continue
            job.tokens.append(toks[r])
            job.logprobs.append(lps[r])
            if job.top_logprobs:
                job.alternatives.append(alternatives(r, job.top_logprobs))
            if job.on_token is not None:
                job.on_token(toks[r])
            if job.stop and self._hit_stop(job):
                self._stop(r, "stop")
            elif len(job.tokens) >= job.max_new_tokens:
                self._stop(r, "length")
            elif job.cancelled:
                self._stop(r, "cancelled")
            elif now > job.deadline:
                self._stop(r, "timeout")

    def _hit_stop(self, job: Job) -> bool:
        """Whether the text's tail holds a stop sequence (a token is at least one character, or a
        part of one: a few more tokens than the longest sequence cover it)."""
        tail = self.decode(job.tokens[-(max(map(len, job.stop)) + 4) :])
        return any(s in tail for s in job.stop)

    def _stop(self, r: int, reason: str) -> None:
        self.active[r] = False
        self.jobs[r].finish_reason = reason


def top_alternatives(logp: torch.Tensor, n: int) -> list[tuple[int, float]]:
    """The n most likely tokens and their log-probabilities; tokens the constraint rules out (−inf) left out."""
    values, ids = logp.float().topk(min(n, logp.shape[-1]))
    return [(i, v) for i, v in zip(ids.tolist(), values.tolist(), strict=True) if v != float("-inf")]
