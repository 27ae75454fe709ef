"""Batching across requests: one thread owns generation and runs waiting requests together in batched generators.

Each HTTP request is one ``Job`` holding one row of the pyfunc (``OnnxChatModel.prepare`` parsed, tokenised and
checked it, so a bad or too long request never takes a place). The scheduler's thread takes the oldest waiting job
and every other waiting job with the same sampling settings, up to ``max_running`` rows generating at once, whose
padded prompt plus budget fit in the context, and runs them in one onnxruntime-genai generator
(``OnnxChatModel.generate_steps``, the project's one loop). onnxruntime-genai 0.18 cannot add a row to a running
generator on CPU (its ``Engine`` batches only with paged attention, which the builder exports for CUDA alone; see
the README), so a job that arrives while a batch runs waits for it to end (``max_batches`` 1, the default), or
starts a batch of its own beside it: the thread runs up to ``max_batches`` generators, one step of each in turn,
and a new one starts between two steps as soon as fewer than ``max_running`` rows are generating.

A row is answered as soon as it ends (its client can send its next request), not when its batch does; the
finished rows of a batch keep their place in its generator (and their KV cache) until the last one ends, so the
memory of up to ``max_batches`` batches can be held at once. Greedy rows give the answers they give alone, since
the pyfunc's batched generation does (its tests check it) and each generator runs as it would alone.

A job whose client left, or whose time ran out, is cancelled: its row takes no more tokens, and a generator stops
before its next step once every row has ended, so a lone request stops within one token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .metrics import Metrics

logger = logging.getLogger(__name__)

CANCELLED = "cancelled"
# Generators run side by side. One by default: side by side, 2 gave a sooner first token at 4 clients but a later one
# and fewer tokens/s at 16 (docs/speed.md, "On the real model, side by side"), where each extra generator reads
# every weight once more per step and a closed loop of clients splits into small batches.
DEFAULT_MAX_BATCHES = 1


class QueueFull(RuntimeError):
    """More requests wait than ``max_waiting``: answered with 429 and ``Retry-After``."""


class Closed(RuntimeError):
    """The scheduler no longer takes jobs (its model is being replaced)."""


@dataclass(eq=False)
class Job:
    """One request's row and the queue its text goes to: ``("text", str)``, then ``("done", None)`` or
    ``("error", message)``."""

    row: Any
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.perf_counter)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    first_token: float | None = None
    last_token: float | None = None
    cancelled: bool = False

    def cancel(self) -> None:
        """Stop this job: a waiting job is dropped, a running row takes no more tokens."""
        self.cancelled = True
        if self.row.finish_reason is None:
            self.row.finish_reason = CANCELLED

    def send(self, kind: str, value: Any = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the request's event loop is gone: nobody waits for this
            pass

    @property
    def key(self) -> Any:
        settings = self.row.request.settings
        return ("alone", id(self)) if getattr(settings, "alone", False) else settings.sampling_key


@dataclass(eq=False)
class Batch:
    """The jobs of one generator, its steps (``OnnxChatModel.generate_steps``) and the jobs not yet answered."""

    jobs: list[Job]
    steps: Iterator[list[tuple[int, str]]] | None  # made at its first step
    open: set[int]


class BatchScheduler:
    """Runs the jobs of one loaded model; ``max_running`` rows generating at once in up to ``max_batches``
    generators, ``max_waiting`` queued."""

    def __init__(
        self,
        python_model: Any,
        max_running: int,
        max_waiting: int,
        metrics: Metrics,
        name: str,
        max_batches: int = DEFAULT_MAX_BATCHES,
    ) -> None:
        self.model, self.max_running, self.max_waiting, self.metrics = python_model, max_running, max_waiting, metrics
        self.max_batches = max_batches
        self.waiting: deque[Job] = deque()
        self.running = 0  # rows generating: taken and not yet answered
        self.closed = False
        self.condition = threading.Condition()
        self.thread = threading.Thread(target=self._work, name=f"generation-{name}", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.condition:
            if self.closed:
                raise Closed("this model is being replaced")
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (--max-queue {self.max_waiting})")
            self.waiting.append(job)
            self.metrics.waiting.inc()
            self.condition.notify()

    def close(self) -> None:
        """Take no new jobs; the thread ends once the waiting and running ones are done."""
        with self.condition:
            self.closed = True
            self.condition.notify()

    def busy(self) -> bool:
        with self.condition:
            return bool(self.waiting) or self.running > 0

    def _take(self, batches: int) -> list[Job] | None:
        """The next batch to start beside ``batches`` running ones: waits for a job while none runs; an empty list
        when none can start now (no job waits, ``max_batches`` run, or ``max_running`` rows generate); ``None``
        when closed and idle."""
        with self.condition:
            while True:
                while self.waiting and self.waiting[0].cancelled:
                    self.waiting.popleft()
                    self.metrics.waiting.dec()
                if self.waiting or batches:
                    break
                if self.closed:
                    return None
                self.condition.wait()
            if not self.waiting or batches >= self.max_batches or self.running >= self.max_running:
                return []
            key, batch, context = self.waiting[0].key, [], self.model.context_length
            for job in list(self.waiting):
                if len(batch) == self.max_running - self.running:
                    break
                if job.cancelled or job.key != key:
                    continue
                widest = max(len(j.row.ids) for j in [*batch, job])
                budget = max(j.row.budget for j in [*batch, job])
                if batch and widest + budget > context:
                    continue
                batch.append(job)
            for job in batch:
                self.waiting.remove(job)
            self.metrics.waiting.dec(len(batch))
            self.running += len(batch)
            self.metrics.running.inc(len(batch))
            return batch

    def _work(self) -> None:
        batches: list[Batch] = []
        while (jobs := self._take(len(batches))) is not None:
            if jobs:
                logger.debug("a batch of %d rows starts beside %d", len(jobs), len(batches))
                batches.append(Batch(jobs, None, set(range(len(jobs)))))
            for batch in list(batches):
                if not self._step(batch):
                    batches.remove(batch)
        logger.info("generation thread %s ended", threading.current_thread().name)

    def _step(self, batch: Batch) -> bool:
        """One step of ``batch`` (the first one prefills it): its text to its jobs, an answer to each job whose row
        ended; whether the batch goes on."""
        try:
            if batch.steps is None:
                batch.steps = self.model.generate_steps([job.row for job in batch.jobs])
            texts = next(batch.steps, None)
        except Exception as error:  # one failed batch must not stop the thread that serves every request
            logger.exception("generation failed for a batch of %d", len(batch.jobs))
            for index in batch.open:
                batch.jobs[index].send("error", f"generation failed: {type(error).__name__}")
            self._answered(len(batch.open))
            return False
        for index, text in texts or []:
            job, now = batch.jobs[index], time.perf_counter()
            if job.first_token is None:
                self.metrics.ttft.observe(now - job.arrived)
            else:
                self.metrics.inter_token.observe(now - job.last_token)
            job.first_token = job.first_token or now
            job.last_token = now
            job.send("text", text)
        ended = [index for index in batch.open if texts is None or batch.jobs[index].row.finish_reason is not None]
        for index in ended:
            job = batch.jobs[index]
            self.metrics.prompt_tokens.inc(len(job.row.ids))
            self.metrics.generation_tokens.inc(job.row.completion_tokens)
            self.metrics.e2e.observe(time.perf_counter() - job.arrived)
            job.send("done")
        batch.open.difference_update(ended)
        self._answered(len(ended))
        if batch.open:
            return True
        if batch.steps is not None:
            batch.steps.close()  # frees the generator now, not when it is collected
        return False

    def _answered(self, rows: int) -> None:
        with self.condition:
            self.running -= rows
        self.metrics.running.dec(rows)
