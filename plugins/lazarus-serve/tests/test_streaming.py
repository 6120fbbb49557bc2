"""A generation that fails: the streamed answer ends with an OpenAI error event (no ``[DONE]``) and a
non-streamed one is a 500, from the one loop over a job's events both read (in process, with the
real engine on a tiny model whose adapter switch breaks every forward pass)."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("starlette")


class BrokenAdapters:
    """An adapter set that cannot be applied: every step fails, as one that ran out of memory would."""

    def select(self, adapters) -> None:
        raise RuntimeError("adapter weights are gone")


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    from lazarus.loader import load_model
    from lazarus_serve.engine import Engine

    model, tokenizer, _ = load_model(tiny_checkpoint("llama"))
    engine = Engine(model, tokenizer, BrokenAdapters())
    engine.start()
    yield engine
    engine.stop()


def _job(engine):
    from lazarus.generation import SamplingConfig
    from lazarus_serve.engine import Job, RowRequest

    prompt = engine.tokenizer.encode("2 + 2 =")
    return Job([RowRequest(prompt, 4, SamplingConfig(temperature=0.0))], asyncio.get_running_loop())


def test_a_failed_stream_ends_with_an_error_event(engine):
    from lazarus_serve.streaming import sse_events

    async def read() -> list[str]:
        events = sse_events(engine, _job(engine), {"id": "cmpl-1", "object": "text_completion"},
                            lambda choice, step: [{"index": choice, "text": step.text}], prompt_tokens=4,
                            include_usage=True)
        return [event async for event in events]

    events = asyncio.run(asyncio.wait_for(read(), timeout=60))
    assert events and all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    assert "data: [DONE]\n\n" not in events
    error = json.loads(events[-1][len("data: "):])["error"]
    assert error == {"message": "generation failed: RuntimeError: adapter weights are gone",
                     "type": "server_error", "param": None, "code": None}


def test_a_failed_request_is_a_500(engine):
    from starlette.requests import Request

    from lazarus_serve.request_fields import APIError
    from lazarus_serve.streaming import collect

    async def connected():  # the client stays: only the engine can end this request
        await asyncio.Event().wait()

    async def ask():
        request = Request({"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}, connected)
        return await collect(engine, request, _job(engine))

    with pytest.raises(APIError) as caught:
        asyncio.run(asyncio.wait_for(ask(), timeout=60))
    assert (caught.value.status, caught.value.type) == (500, "server_error")
    assert caught.value.message == "generation failed: RuntimeError: adapter weights are gone"
