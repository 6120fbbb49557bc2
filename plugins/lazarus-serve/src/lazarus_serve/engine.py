"""The generation thread: one :class:`~lazarus.batch_generator.BatchGenerator` shared by every request.

HTTP handlers run on the event loop; all model work runs here, on one thread. A handler submits a
:class:`Job` (one request: ``n`` rows per prompt) and reads its events from an ``asyncio.Queue``.
Between two steps the thread takes in new jobs (their rows join the running batch), drops the
rows of jobs whose client went away, and runs one step. Events are handed to the event loop
without waiting for the client, so a slow reader never holds up the batch: its tokens queue up
(at most ``max_tokens`` of them) until it reads them.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from lazarus.batch_generator import BatchGenerator


@attrs.define(eq=False)
class RowRequest:
    """One row of a job: prompt ids, how long, how to sample, and which adapter (0 = base)."""

    prompt: list[int]
    max_tokens: int
    sampling: Any
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    adapter: int = 0


@attrs.define(eq=False)
class Job:
    """One HTTP request. ``events`` receives lists of ``(choice index, RowStep)``, then ``None`` when
    every row has finished, or an ``Exception`` if generation failed."""

    rows: list[RowRequest]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = attrs.field(factory=asyncio.Queue)
    cancelled: bool = False

    def cancel(self) -> None:
        """The client went away: the engine drops this job's rows before its next step."""
        self.cancelled = True

    def _send(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass


class Engine:
    """Runs the shared batch on its own thread. ``adapters`` (an ``AdapterSet``) is told which
    adapter each row uses before every forward pass."""

    def __init__(self, model, tokenizer, adapters, *, max_batch: int = 16, prefill_step_size: int = 2048,
                 prefix_cache_tokens: int = 0):
        self.model, self.tokenizer, self.adapters = model, tokenizer, adapters
        self.max_batch, self.prefill_step_size = max_batch, prefill_step_size
        self.prefix_cache_tokens = prefix_cache_tokens
        self._inbox: queue.Queue = queue.Queue()
        self._jobs: dict[Job, dict[int, int]] = {}  # job -> {row id: choice index}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lazarus-serve-engine", daemon=True)
        self._generator: BatchGenerator | None = None  # (made by _run, on the thread)
        self.dropped_rows = 0  # rows removed unfinished because their client went away

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._inbox.put(None)
        self._thread.join(timeout=10)

    def submit(self, job: Job) -> None:
        self._inbox.put(job)

    # -- the thread -----------------------------------------------------------------------------
    def _new_generator(self) -> BatchGenerator:
        from lazarus.batch_generator import BatchGenerator

        return BatchGenerator(self.model, self.tokenizer, max_batch=self.max_batch,
                              prefill_step_size=self.prefill_step_size,
                              prefix_cache_tokens=self.prefix_cache_tokens,
                              before_forward=lambda tags: self.adapters.select([t[2] for t in tags]))

    def _run(self) -> None:
        self._generator = self._new_generator()
        while not self._stopping.is_set():
            self._take_jobs(block=not len(self._generator))
            self._drop_cancelled()
            if not len(self._generator):
                continue
            try:
                outs = self._generator.step()
            except Exception as exc:  # a failed step fails the jobs in it, not the server
                for job in list(self._jobs):
                    job._send(exc)
                self._jobs.clear()
                self._generator = self._new_generator()
                continue
            by_job: dict[Job, list] = {}
            for out in outs:
                job, choice, _ = out.tag
                by_job.setdefault(job, []).append((choice, out))
                if out.finish_reason is not None:
                    self._jobs[job].pop(out.row, None)
            for job, events in by_job.items():
                job._send(events)
                if not self._jobs[job]:
                    del self._jobs[job]
                    job._send(None)

    def _take_jobs(self, block: bool) -> None:
        assert self._generator is not None  # (called from _run, after it made the generator)
        while True:
            try:
                job = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            except queue.Empty:
                return
            if job is None:
                return
            block = False
            rows = {}
            try:
                for choice, row in enumerate(job.rows):
                    row_id = self._generator.add(row.prompt, max_tokens=row.max_tokens, sampling=row.sampling,
                                                 stop=row.stop, logprobs=row.logprobs,
                                                 tag=(job, choice, row.adapter), prefix_key=row.adapter)
                    rows[row_id] = choice
            except Exception as exc:  # checked by the handler already; never let it stop the thread
                for row_id in rows:
                    self._generator.remove(row_id)
                job._send(exc)
                continue
            self._jobs[job] = rows

    def _drop_cancelled(self) -> None:
        assert self._generator is not None  # (called from _run, after it made the generator)
        for job in [j for j in self._jobs if j.cancelled]:
            for row_id in self._jobs.pop(job):
                self.dropped_rows += self._generator.remove(row_id)

    @property
    def prefix_hits(self) -> int:
        """Requests that reused the cached keys and values of an earlier one."""
        prefixes = getattr(self._generator, "_prefixes", None)
        return prefixes.hits if prefixes is not None else 0

    @property
    def active_rows(self) -> int:
        generator = self._generator
        return len(generator) if generator is not None else 0
