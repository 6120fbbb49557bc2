"""The HTTP side: a starlette app with the OpenAI routes, request checking and response shapes.

Routes: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (``stream: true`` answers with server-sent events) and ``GET /health``.
Every mistake in a request is answered with a 4xx and an OpenAI-style body
(``{"error": {"message", "type", "param", "code"}}``); nothing a client sends produces a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from lazarus_serve.engine import Job, RowRequest

MAX_N = 64
MAX_ROWS = 256  # choices in one request: n times the prompts
MAX_TOP_LOGPROBS = 20
MAX_STOPS = 16


class APIError(Exception):
    """A request the server refuses: HTTP ``status`` and the OpenAI error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, self.type)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   type: str = "invalid_request_error") -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


# -- request fields -------------------------------------------------------------------------------------
def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise APIError(400, f"'{name}' must be a number, got {json.dumps(value)}", name, "invalid_type")
    if value < low or value > high or (low_open and value == low):
        side = f"> {low:g}" if low_open else f">= {low:g}"
        raise APIError(400, f"'{name}' must be {side} and <= {high:g}, got {value:g}", name, "invalid_value")
    return float(value)


def _integer(body: dict, name: str, default: int | None, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"'{name}' must be an integer, got {json.dumps(value)}", name, "invalid_type")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise APIError(400, f"'{name}' must be {bound}, got {value}", name, "invalid_value")
    return value


def _boolean(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, f"'{name}' must be true or false, got {json.dumps(value)}", name, "invalid_type")
    return value


def _stops(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value) or len(value) > MAX_STOPS:
        raise APIError(400, f"'stop' must be a string or a list of at most {MAX_STOPS} strings", "stop",
                       "invalid_type")
    return tuple(s for s in value if s)


class Server:
    """What the routes share: the model's names, tokenizer, context length, the engine, the key."""

    def __init__(self, *, name: str, adapters: list[str], tokenizer, engine, context: int | None,
                 default_max_tokens: int, api_key: str | None):
        self.name, self.adapter_names = name, adapters
        self.tokenizer, self.engine = tokenizer, engine
        self.context, self.default_max_tokens = context, default_max_tokens
        self.api_key = api_key
        self.created = int(time.time())

    # -- checks shared by both completion routes ------------------------------------------------
    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer KEY' with the key "
                                "given to `lazarus serve --api-key`", None, "invalid_api_key")

    async def body(self, request: Request) -> dict:
        self.authorize(request)
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise APIError(400, f"We could not parse the JSON body of your request ({exc}). Send a JSON "
                                "object with Content-Type: application/json.", None, "invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "The request body must be a JSON object", None, "invalid_json")
        return body

    def adapter_index(self, body: dict) -> tuple[str, int]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise APIError(400, "'model' is required: the base model's id or an adapter's name (GET /v1/models)",
                           "model", "missing_required_parameter")
        if model == self.name:
            return model, 0
        if model in self.adapter_names:
            return model, self.adapter_names.index(model) + 1
        known = ", ".join([self.name, *self.adapter_names])
        raise APIError(404, f"The model '{model}' does not exist; this server has: {known}", "model",
                       "model_not_found")

    def rows(self, body: dict, prompts: list[list[int]], adapter: int, param: str, logprobs: int | None,
             n: int) -> list[RowRequest]:
        from lazarus.generation import SamplingConfig

        for name in ("frequency_penalty", "presence_penalty"):
            if _number(body, name, 0.0, -2.0, 2.0):
                raise APIError(400, f"'{name}' is not supported by lazarus serve; leave it out or 0", name,
                               "unsupported_parameter")
        if _integer(body, "best_of", n, 1) != n:
            raise APIError(400, "'best_of' is not supported by lazarus serve; use 'n'", "best_of",
                           "unsupported_parameter")
        temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
        seed = _integer(body, "seed", None, -(2 ** 63), 2 ** 64 - 1)
        asked = _integer(body, "max_completion_tokens", None, 1)
        asked = _integer(body, "max_tokens", asked, 1)
        stops = _stops(body)
        if n * len(prompts) > MAX_ROWS:
            raise APIError(400, f"{len(prompts)} prompts times n={n} asks for {n * len(prompts)} choices; at most "
                                f"{MAX_ROWS} per request", "n", "invalid_value")
        rows = []
        for prompt in prompts:
            room = None if self.context is None else self.context - len(prompt)
            if room is not None and room <= 0:
                raise APIError(400, f"This model's maximum context length is {self.context} tokens; your "
                                    f"{param} is {len(prompt)} tokens. Shorten it.", param,
                               "context_length_exceeded")
            if asked is not None and room is not None and asked > room:
                raise APIError(400, f"This model's maximum context length is {self.context} tokens; you asked "
                                    f"for {len(prompt)} tokens in the {param} plus {asked} in the completion. "
                                    "Lower max_tokens or shorten the prompt.", "max_tokens",
                               "context_length_exceeded")
            max_tokens = asked if asked is not None else min(self.default_max_tokens, room or self.default_max_tokens)
            for i in range(n):
                row_seed = None if seed is None else (seed + i) % 2 ** 63
                sampling = SamplingConfig(temperature=temperature, top_p=top_p, seed=row_seed)
                rows.append(RowRequest(prompt, max_tokens, sampling, stops, logprobs, adapter))
        return rows

    # -- running a job --------------------------------------------------------------------------
    async def collect(self, request: Request, job: Job) -> list[list] | None:
        """Wait for every event of a non-streamed job; None (and the job dropped) when the client
        disconnects first."""
        self.engine.submit(job)
        watcher = asyncio.ensure_future(_disconnected(request))
        per_choice: list[list] = [[] for _ in job.rows]
        try:
            while True:
                getter = asyncio.ensure_future(job.events.get())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    return None
                item = getter.result()
                if item is None:
                    return per_choice
                if isinstance(item, Exception):
                    raise APIError(500, f"generation failed: {type(item).__name__}: {item}", None, None,
                                   "server_error")
                for choice, step in item:
                    per_choice[choice].append(step)
        finally:
            watcher.cancel()
            job.cancel()

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


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


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _usage(steps: list[list], prompt_tokens: int) -> dict:
    completion = sum(s[-1].generated_tokens for s in steps if s)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion}


# -- /v1/models -----------------------------------------------------------------------------------------
def model_card(server: Server, name: str) -> dict:
    card = {"id": name, "object": "model", "created": server.created, "owned_by": "lazarus"}
    if name != server.name:
        card["parent"] = server.name
    return card


async def list_models(request: Request) -> JSONResponse:
    server: Server = request.app.state.server
    server.authorize(request)
    return JSONResponse({"object": "list",
                         "data": [model_card(server, n) for n in [server.name, *server.adapter_names]]})


async def get_model(request: Request) -> JSONResponse:
    server: Server = request.app.state.server
    server.authorize(request)
    name = request.path_params["model"]
    server.adapter_index({"model": name})
    return JSONResponse(model_card(server, name))


async def health(request: Request) -> JSONResponse:
    engine = request.app.state.server.engine
    return JSONResponse({"status": "ok", "active_rows": engine.active_rows, "dropped_rows": engine.dropped_rows,
                         "prefix_hits": engine.prefix_hits})


# -- /v1/chat/completions -------------------------------------------------------------------------------
def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list of {role, content} objects", "messages",
                       "invalid_type")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise APIError(400, f"messages[{i}] must be an object with a 'role' string", f"messages[{i}]",
                           "invalid_type")
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text can be fed to a language model
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise APIError(400, f"messages[{i}].content: only text parts are supported",
                                   f"messages[{i}].content", "invalid_type")
                texts.append(part["text"])
            content = "".join(texts)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string or a list of text parts",
                           f"messages[{i}].content", "invalid_type")
        out.append({"role": message["role"], "content": content})
    return out


def _chat_logprobs(server: Server, steps, top: int) -> dict:
    content = []
    eos = server.tokenizer.eos_token_ids
    for s in steps:
        if s.logprob is None or s.token in eos:
            continue
        text = server.token_text(s.token)
        entry = {"token": text, "logprob": s.logprob, "bytes": list(text.encode()), "top_logprobs": []}
        for token, value in (s.top_logprobs or [])[:top]:
            t = server.token_text(token)
            entry["top_logprobs"].append({"token": t, "logprob": value, "bytes": list(t.encode())})
        content.append(entry)
    return {"content": content}


async def chat_completions(request: Request):
    server: Server = request.app.state.server
    body = await server.body(request)
    model, adapter = server.adapter_index(body)
    messages = _messages(body)
    tokenizer = server.tokenizer
    if not tokenizer.has_chat_template():
        raise APIError(400, f"the model '{server.name}' has no chat template; use /v1/completions with a "
                            "plain prompt", "messages", "no_chat_template")
    try:
        prompt = tokenizer.encode_chat(messages, add_generation_prompt=True)
    except Exception as exc:  # the template itself may refuse (e.g. an unknown role)
        raise APIError(400, f"the chat template could not render these messages: {exc}", "messages",
                       "invalid_value") from None
    want_logprobs = _boolean(body, "logprobs")
    top = _integer(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    n = _integer(body, "n", 1, 1, MAX_N)
    stream = _boolean(body, "stream")
    include_usage = _include_usage(body)
    rows = server.rows(body, [prompt], adapter, "messages", top if want_logprobs else None, n)
    job = Job(rows, asyncio.get_running_loop())
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if stream:
        return EventStream(_chat_stream(server, job, ident, created, model, len(prompt), include_usage,
                                        want_logprobs, top), job)
    steps = await server.collect(request, job)
    if steps is None:  # nobody to answer
        return Response(status_code=499)
    choices = []
    for i, s in enumerate(steps):
        choices.append({"index": i, "message": {"role": "assistant", "content": "".join(x.text for x in s)},
                        "logprobs": _chat_logprobs(server, s, top) if want_logprobs else None,
                        "finish_reason": s[-1].finish_reason})
    return JSONResponse({"id": ident, "object": "chat.completion", "created": created, "model": model,
                         "system_fingerprint": None, "choices": choices, "usage": _usage(steps, len(prompt))})


async def _chat_stream(server, job, ident, created, model, prompt_tokens, include_usage, want_logprobs, top):
    server.engine.submit(job)
    head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None}
    last: list = [None] * len(job.rows)
    try:
        for i in range(len(job.rows)):
            yield _sse({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None}]})
        while True:
            item = await job.events.get()
            if item is None:
                break
            if isinstance(item, Exception):
                yield _sse({"error": {"message": f"generation failed: {type(item).__name__}: {item}",
                                      "type": "server_error", "param": None, "code": None}})
                return
            for choice, step in item:
                last[choice] = step
                logprobs = _chat_logprobs(server, [step], top) if want_logprobs else None
                if step.text or (logprobs and logprobs["content"]):
                    yield _sse({**head, "choices": [{"index": choice, "delta": {"content": step.text},
                                                     "logprobs": logprobs, "finish_reason": None}]})
                if step.finish_reason is not None:
                    yield _sse({**head, "choices": [{"index": choice, "delta": {}, "logprobs": None,
                                                     "finish_reason": step.finish_reason}]})
        if include_usage:
            yield _sse({**head, "choices": [], "usage": _usage([[s] for s in last if s], prompt_tokens)})
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()


def _include_usage(body: dict) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object", "stream_options", "invalid_type")
    return _boolean(options, "include_usage")


# -- /v1/completions ------------------------------------------------------------------------------------
def _prompts(server: Server, body: dict) -> list[list[int]]:
    prompt = body.get("prompt")
    vocab = server.tokenizer.vocab_size
    if isinstance(prompt, str):
        prompt = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise APIError(400, "'prompt' must be a string, a list of strings, or token ids", "prompt", "invalid_type")
    out = []
    for p in prompt:
        if isinstance(p, str):
            ids = server.tokenizer.encode(p)
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            if not all(0 <= t < vocab for t in p):
                raise APIError(400, f"'prompt' token ids must be between 0 and {vocab - 1}", "prompt",
                               "invalid_value")
            ids = list(p)
        else:
            raise APIError(400, "'prompt' must be a string, a list of strings, or token ids", "prompt",
                           "invalid_type")
        if not ids:
            raise APIError(400, "'prompt' is empty after tokenisation; give some text", "prompt", "invalid_value")
        out.append(ids)
    return out


def _completion_logprobs(server: Server, steps, offset: int) -> dict:
    tokens, values, tops, offsets = [], [], [], []
    eos = server.tokenizer.eos_token_ids
    for s in steps:
        if s.logprob is None or s.token in eos:
            continue
        tokens.append(server.token_text(s.token))
        values.append(s.logprob)
        tops.append({server.token_text(t): v for t, v in (s.top_logprobs or [])})
        offsets.append(offset)
        offset += len(s.text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


async def completions(request: Request):
    server: Server = request.app.state.server
    body = await server.body(request)
    model, adapter = server.adapter_index(body)
    if _boolean(body, "echo"):
        raise APIError(400, "'echo' is not supported by lazarus serve", "echo", "unsupported_parameter")
    if body.get("suffix"):
        raise APIError(400, "'suffix' is not supported by lazarus serve", "suffix", "unsupported_parameter")
    prompts = _prompts(server, body)
    logprobs = _integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
    n = _integer(body, "n", 1, 1, MAX_N)
    stream = _boolean(body, "stream")
    include_usage = _include_usage(body)
    rows = server.rows(body, prompts, adapter, "prompt", logprobs, n)
    prompt_tokens = sum(len(p) for p in prompts)
    job = Job(rows, asyncio.get_running_loop())
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if stream:
        return EventStream(_completion_stream(server, job, ident, created, model, prompt_tokens,
                                              include_usage, logprobs), job)
    steps = await server.collect(request, job)
    if steps is None:
        return Response(status_code=499)
    choices = [{"index": i, "text": "".join(x.text for x in s),
                "logprobs": _completion_logprobs(server, s, 0) if logprobs is not None else None,
                "finish_reason": s[-1].finish_reason} for i, s in enumerate(steps)]
    return JSONResponse({"id": ident, "object": "text_completion", "created": created, "model": model,
                         "system_fingerprint": None, "choices": choices, "usage": _usage(steps, prompt_tokens)})


async def _completion_stream(server, job, ident, created, model, prompt_tokens, include_usage, logprobs):
    server.engine.submit(job)
    head = {"id": ident, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": None}
    last: list = [None] * len(job.rows)
    offsets = [0] * len(job.rows)
    try:
        while True:
            item = await job.events.get()
            if item is None:
                break
            if isinstance(item, Exception):
                yield _sse({"error": {"message": f"generation failed: {type(item).__name__}: {item}",
                                      "type": "server_error", "param": None, "code": None}})
                return
            for choice, step in item:
                last[choice] = step
                lp = _completion_logprobs(server, [step], offsets[choice]) if logprobs is not None else None
                offsets[choice] += len(step.text)
                if step.text or step.finish_reason is not None or (lp and lp["tokens"]):
                    yield _sse({**head, "choices": [{"index": choice, "text": step.text, "logprobs": lp,
                                                     "finish_reason": step.finish_reason}]})
        if include_usage:
            yield _sse({**head, "choices": [], "usage": _usage([[s] for s in last if s], prompt_tokens)})
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()


# -- the app --------------------------------------------------------------------------------------------
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code == 404:
        message = f"Unknown path {request.url.path}; this server answers /v1/models, /v1/chat/completions " \
                  "and /v1/completions"
        return error_response(404, message, None, "not_found")
    if exc.status_code == 405:
        return error_response(405, f"{request.method} is not allowed on {request.url.path}", None,
                              "method_not_allowed")
    return error_response(exc.status_code, str(exc.detail), None, None)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}", None, None, "server_error")


def make_app(server: Server, allow_origins: tuple[str, ...] = ()) -> Starlette:
    """The starlette app serving ``server``; the caller starts and stops ``server.engine``.
    ``allow_origins``: browser origins allowed to call the API (CORS); none by default."""
    routes = [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ]
    middleware = []
    if allow_origins:
        from starlette.middleware import Middleware
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(Middleware(CORSMiddleware, allow_origins=list(allow_origins), allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type"]))
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _server_error})
    app.state.server = server
    return app
