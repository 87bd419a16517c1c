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

import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from convrec.catalog import Catalog
from convrec.decoding.constrained import CatalogConstraints
from convrec.decoding.generate import encode_prompt, left_pad
from convrec.decoding.loop import decode_constrained
from convrec.decoding.mentions import MentionFinder
from convrec.models.load import stop_token_ids
from convrec.serve.rows import Adjust, Job, LogSoftmax, RowStopper

__all__ = ["Engine", "Job", "Overloaded"]

log = logging.getLogger("convrec.serve")


class Overloaded(Exception):
    """The queue is full: the caller answers 503."""


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
        pad = self.tokenizer.pad_token_id
        input_ids, attention = left_pad([j.prompt for j in jobs], pad, self.model.device)
        # a group is all constrained or all free text (`_run` groups them so)
        decode = self._decode_restricted if jobs[0].constraint is not None else self._decode_free
        decode(jobs, input_ids, attention)
        self.batches += 1
        self.batched_rows += len(jobs)
        for job in jobs:
            self.generated_tokens += len(job.tokens)
            job.batch_size = len(jobs)
            _resolve(job, None)

    def _decode_free(self, jobs: list[Job], input_ids: torch.Tensor, attention: torch.Tensor) -> None:
        """Free-text rows: `model.generate` over the whole vocabulary."""
        adjust = Adjust(jobs, input_ids.shape[1]) if any(j.adjusts_logits for j in jobs) else None
        logp = LogSoftmax()
        stopper = RowStopper(jobs, logp, self.stops, self.decode)
        first = jobs[0]
        with _seeded(first.seed if first.do_sample else None, self.model.device):
            self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max(j.max_new_tokens for j in jobs),
                do_sample=first.do_sample,
                temperature=first.temperature if first.do_sample else None,
                top_p=first.top_p if first.do_sample else None,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.stops,
                logits_processor=LogitsProcessorList([p for p in (adjust, logp) if p is not None]),
                stopping_criteria=StoppingCriteriaList([stopper]),
            )

    def _decode_restricted(self, jobs: list[Job], input_ids: torch.Tensor, attention: torch.Tensor) -> None:
        """Catalog-constrained rows: the loop that scores only each row's allowed ids."""
        adjuster = Adjust(jobs, input_ids.shape[1]) if any(j.adjusts_logits for j in jobs) else None
        watcher = RowStopper(jobs, None, self.stops, self.decode, adjuster)
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
        for job, state in zip(jobs, states, strict=True):
            job.items = [self.constraints.row_of_item[i] for i in state.items]
            job.complete = state.at_line_start


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
