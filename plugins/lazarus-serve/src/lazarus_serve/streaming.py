"""Reading a job's events: all at once (:func:`collect`) or as server-sent events (:func:`sse_events`).

Both read :func:`job_steps`, the one loop over ``job.events``: the engine's ``(choice, RowStep)``
pairs until every row has finished, :class:`GenerationFailed` when generation broke. A route
says only what a step looks like in its answer (a chat delta or a completion text chunk).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from lazarus_serve.engine import Job
from lazarus_serve.request_fields import APIError, error_body


class GenerationFailed(Exception):
    """The engine reported an exception for a job (its message names it)."""

    def __init__(self, error: Exception):
        super().__init__(f"generation failed: {type(error).__name__}: {error}")


async def job_steps(job: Job) -> AsyncIterator[tuple[int, Any]]:
    """Every ``(choice index, RowStep)`` of a submitted job, in order, until all its rows finished."""
    while True:
        item = await job.events.get()
        if item is None:
            return
        if isinstance(item, Exception):
            raise GenerationFailed(item)
        for choice, step in item:
            yield choice, step


def usage(steps: list[list], prompt_tokens: int) -> dict:
    """The ``usage`` object: ``steps`` per choice (its last step counts the tokens generated)."""
    completion = sum(s[-1].generated_tokens for s in steps if s)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion}


# -- answering at once ----------------------------------------------------------------------------------
async def collect(engine, request: Request, job: Job) -> list[list] | None:
    """Submit ``job`` and wait for all its steps, per choice; None (and the job dropped) when the
    client disconnects first."""
    engine.submit(job)
    per_choice: list[list] = [[] for _ in job.rows]

    async def read() -> None:
        async for choice, step in job_steps(job):
            per_choice[choice].append(step)

    reader = asyncio.ensure_future(read())
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({reader, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if reader not in done:
            return None
        try:
            reader.result()
        except GenerationFailed as exc:
            raise APIError(500, str(exc), None, None, "server_error") from None
        return per_choice
    finally:
        for task in (reader, watcher):
            task.cancel()
        job.cancel()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# -- streaming ------------------------------------------------------------------------------------------
class EventStream(StreamingResponse):
    """Server-sent events that stop (and drop the job) as soon as the client disconnects."""

    def __init__(self, content, job: Job):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        stream = asyncio.ensure_future(self.stream_response(send))
        watcher = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({stream, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.job.cancel()
            for task in (stream, watcher):
                task.cancel()
            await asyncio.gather(stream, watcher, return_exceptions=True)


def sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def sse_events(engine, job: Job, head: dict, chunks: Callable[[int, Any], Iterable[dict]], *,
                     prompt_tokens: int, include_usage: bool, opening: Iterable[dict] = ()) -> AsyncIterator[str]:
    """Submit ``job`` and yield its answer as server-sent events: ``head`` (id, object, created,
    model) with one choice each, from ``opening`` and then ``chunks(choice, step)`` for every step;
    a usage chunk when asked, then ``[DONE]``. When generation fails, the last event is the error."""
    engine.submit(job)
    last: list = [None] * len(job.rows)
    try:
        for choice in opening:
            yield sse({**head, "choices": [choice]})
        try:
            async for index, step in job_steps(job):
                last[index] = step
                for choice in chunks(index, step):
                    yield sse({**head, "choices": [choice]})
        except GenerationFailed as exc:
            yield sse(error_body(str(exc), type="server_error"))
            return
        if include_usage:
            yield sse({**head, "choices": [], "usage": usage([[s] for s in last if s], prompt_tokens)})
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()


def stream_response(engine, job: Job, head: dict, chunks: Callable[[int, Any], Iterable[dict]], *,
                    prompt_tokens: int, include_usage: bool, opening: Iterable[dict] = ()) -> EventStream:
    """The :class:`EventStream` of :func:`sse_events`."""
    return EventStream(sse_events(engine, job, head, chunks, prompt_tokens=prompt_tokens,
                                  include_usage=include_usage, opening=opening), job)
