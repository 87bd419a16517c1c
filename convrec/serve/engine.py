"""The serving engine: one model, one worker thread, dynamic batching of concurrent requests.

Requests become `Job`s on a queue. The worker takes the first waiting job, waits up to
``batch_wait_s`` for more (up to ``max_batch``), and decodes each group of jobs that share sampling
settings together: catalog-constrained groups in the restricted-head loop that `convrec generate` and
the rollouts use (`convrec.decoding.loop`: the head over the allowed ids only), free-text groups with
`model.generate`. Rows differ in everything else: each has its own catalog
constraint (or none), penalties and token biases, stop sequences, token budget, deadline and
streaming callback; a `StoppingCriteria` stops each row on its own stop sequence, budget, deadline
or cancellation, so one batch serves them all. A sampled job with a seed runs alone, so that the
seed alone decides its draws. Results go back to the asyncio side with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from convrec.catalog import Catalog
from convrec.decoding.constrained import CatalogConstraints, RowConstraint
from convrec.decoding.generate import encode_prompt, left_pad
from convrec.decoding.head import RestrictedLogits
from convrec.decoding.loop import decode_constrained
from convrec.decoding.mentions import MentionFinder
from convrec.models.load import stop_token_ids

log = logging.getLogger("convrec.serve")


class Overloaded(Exception):
    """The queue is full: the caller answers 503."""


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


class _LogSoftmax(LogitsProcessor):
    """Last in the list: keeps the final step distribution so each chosen token gets its log-probability."""

    def __init__(self) -> None:
        self.last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.last = torch.log_softmax(scores, dim=-1)
        return scores


class _Adjust(LogitsProcessor):
    """OpenAI's presence and frequency penalties and `logit_bias`, row by row, before the catalog mask:
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


class _RowStopper(StoppingCriteria):
    """Collects each row's tokens (streaming them) and stops a row at a stop token (any token that ends a
    turn), one of its stop sequences, its budget, deadline or cancel."""

    def __init__(
        self, jobs: list[Job], logp: _LogSoftmax | None, stops: list[int], decode: Callable, adjuster=None
    ) -> None:
        self.jobs, self.logp, self.stops, self.decode = jobs, logp, set(stops), decode
        self.adjuster: _Adjust | None = adjuster
        self.active = [True] * len(jobs)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        """`model.generate`'s stopping criterion: the column it just generated."""
        last = input_ids[:, -1:]
        logp = self.logp.last
        lps = logp.gather(1, last).squeeze(1).tolist() if logp is not None else [0.0] * len(self.jobs)
        self._take(last.squeeze(1).tolist(), lps, lambda r, n: _top(logp[r], n) if logp is not None else [])
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
            self._take(tokens, lps, lambda r, n: [(int(scored.ids[i]), v) for i, v in _top(logp[r], n)])
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


def _top(logp: torch.Tensor, n: int) -> list[tuple[int, float]]:
    """The n most likely tokens and their log-probabilities; tokens the constraint rules out (−inf) left out."""
    values, ids = logp.float().topk(min(n, logp.shape[-1]))
    return [(i, v) for i, v in zip(ids.tolist(), values.tolist(), strict=True) if v != float("-inf")]


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """The generator seeded for one call, and restored after it (other requests' draws stay random)."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class Engine:
    """Model + tokenizer + catalog, and the batching worker that serves them."""

    def __init__(
        self,
        model,
        tokenizer,
        catalog: Catalog,
        *,
        n_items: int = 20,
        max_prompt_tokens: int = 768,
        max_batch: int = 16,
        batch_wait_s: float = 0.005,
        max_queue: int = 256,
    ) -> None:
        self.model, self.tokenizer, self.catalog = model, tokenizer, catalog
        self.n_items, self.max_prompt_tokens = n_items, max_prompt_tokens
        self.max_batch, self.batch_wait_s, self.max_queue = max_batch, batch_wait_s, max_queue
        self.constraints = CatalogConstraints(tokenizer, catalog)
        self.stops = stop_token_ids(tokenizer, model)  # any token that ends the model's turn
        self.mentions = MentionFinder(catalog)
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.batches = 0
        self.batched_rows = 0
        self.generated_tokens = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the tokenizer is shared by request threads and the worker

    # --- request side (any thread) -------------------------------------------------------------
    def encode(self, messages: list[dict]) -> list[int]:
        with self._lock:
            return encode_prompt(self.tokenizer, messages, self.n_items, self.max_prompt_tokens)[0]

    def decode(self, tokens: list[int]) -> str:
        with self._lock:
            return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def submit(self, job: Job) -> None:
        if self.queue.qsize() >= self.max_queue:
            raise Overloaded(f"{self.queue.qsize()} requests are waiting; try again shortly")
        self.queue.put(job)

    def token_starts(self, tokens: list[int]) -> list[int]:
        """Where each token's text starts in the decoded output."""
        with self._lock:
            return [len(self.tokenizer.decode(tokens[:i], skip_special_tokens=True)) for i in range(len(tokens))]

    def token_texts(self, ids: list[int]) -> list[str]:
        with self._lock:
            return [self.tokenizer.decode([i]) for i in ids]

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def line_scores(self, job: Job) -> list[tuple[str, float]]:
        """Each output line with the summed log-probability of its tokens (a token belongs to the line it
        starts in, so a line's newline is its own)."""
        starts = self.token_starts(job.tokens)
        text = self.decode(job.tokens)
        lines = text.split("\n")
        scores = [0.0] * len(lines)
        for start, lp in zip(starts, job.logprobs, strict=True):
            scores[min(text.count("\n", 0, start), len(lines) - 1)] += lp
        return list(zip(lines, scores, strict=True))

    # --- worker -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="convrec-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.queue.put(None)
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            until = time.monotonic() + self.batch_wait_s
            stop = False
            while len(batch) < self.max_batch:
                try:
                    job = self.queue.get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            groups: dict[tuple, list[Job]] = {}
            for job in batch:  # constrained and free-text rows decode apart (the restricted loop or generate)
                groups.setdefault((job.constraint is not None, job.sampling_key), []).append(job)
            for jobs in groups.values():
                try:
                    self._generate(jobs)
                except Exception as e:  # a bug must fail these requests, never the worker
                    log.exception("generation failed")
                    for job in jobs:
                        _resolve(job, e)
            if stop:
                return

    @torch.no_grad()
    def _generate(self, jobs: list[Job]) -> None:
        now = time.monotonic()
        for job in jobs:
            if job.cancelled or now > job.deadline:
                job.finish_reason = "cancelled" if job.cancelled else "timeout"
                _resolve(job, None)
        jobs = [j for j in jobs if not (j.cancelled or j.finish_reason == "timeout")]
        if not jobs:
            return
        tok = self.tokenizer
        pad = tok.pad_token_id
        input_ids, attention = left_pad([j.prompt for j in jobs], pad, self.model.device)
        if all(j.constraint is not None for j in jobs):
            self._decode_restricted(jobs, input_ids, attention)
            return
        constrained = any(j.constraint is not None for j in jobs)
        proc = self.constraints.processor([j.constraint for j in jobs]) if constrained else None
        adjust = _Adjust(jobs, input_ids.shape[1]) if any(j.adjusts_logits for j in jobs) else None
        logp = _LogSoftmax()
        stops = self.stops
        stopper = _RowStopper(jobs, logp, stops, self.decode)
        first = jobs[0]
        with _seeded(first.seed if first.do_sample else None, self.model.device):
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max(j.max_new_tokens for j in jobs),
                do_sample=first.do_sample,
                temperature=first.temperature if first.do_sample else None,
                top_p=first.top_p if first.do_sample else None,
                pad_token_id=pad,
                eos_token_id=stops,
                logits_processor=LogitsProcessorList([p for p in (adjust, proc, logp) if p is not None]),
                stopping_criteria=StoppingCriteriaList([stopper]),
            )
        if proc is not None:
            proc.finish(out)
        self.batches += 1
        self.batched_rows += len(jobs)
        for r, job in enumerate(jobs):
            self.generated_tokens += len(job.tokens)
            job.batch_size = len(jobs)
            if proc is not None and job.constraint is not None:
                job.items = [self.constraints.row_of_item[i] for i in proc.items(r)]
                job.complete = proc.complete(r)
            _resolve(job, None)

    def _decode_restricted(self, jobs: list[Job], input_ids: torch.Tensor, attention: torch.Tensor) -> None:
        """Catalog-constrained rows: the loop that scores only each row's allowed ids."""
        adjuster = _Adjust(jobs, input_ids.shape[1]) if any(j.adjusts_logits for j in jobs) else None
        watcher = _RowStopper(jobs, None, self.stops, self.decode, adjuster)
        states = self.constraints.states([j.constraint for j in jobs])
        first = jobs[0]
        with _seeded(first.seed if first.do_sample else None, self.model.device):
            decode_constrained(
                self.model,
                input_ids,
                attention,
                states,
                max_new_tokens=max(j.max_new_tokens for j in jobs),
                pad_id=self.tokenizer.pad_token_id,
                stop_ids=self.stops,
                greedy=not first.do_sample,
                temperature=first.temperature,
                top_p=first.top_p,
                observer=watcher,
            )
        self.batches += 1
        self.batched_rows += len(jobs)
        for job, state in zip(jobs, states, strict=True):
            self.generated_tokens += len(job.tokens)
            job.batch_size = len(jobs)
            job.items = [self.constraints.row_of_item[i] for i in state.items]
            job.complete = state.at_line_start
            _resolve(job, None)


def _resolve(job: Job, error: BaseException | None) -> None:
    def settle() -> None:
        if job.on_token is not None:
            job.on_token(None)
        if job.future.done():  # the client went away
            return
        if error is None:
            job.future.set_result(job)
        else:
            job.future.set_exception(error)

    job.loop.call_soon_threadsafe(settle)
