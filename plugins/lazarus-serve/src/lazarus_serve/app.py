"""The HTTP side: a starlette app with the OpenAI routes and their response shapes.

Routes: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (``stream: true`` answers with server-sent events, :mod:`lazarus_serve.streaming`)
and ``GET /health``. Every mistake in a request is answered with a 4xx and an OpenAI-style body
(``{"error": {"message", "type", "param", "code"}}``, :mod:`lazarus_serve.request_fields`); nothing a
client sends produces a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lazarus_serve import request_fields as fields
from lazarus_serve.engine import Job, RowRequest
from lazarus_serve.request_fields import MAX_N, MAX_ROWS, MAX_TOP_LOGPROBS, APIError, error_response
from lazarus_serve.streaming import collect, stream_response, usage


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
            if fields.number(body, name, 0.0, -2.0, 2.0):
                raise APIError(400, f"'{name}' is not supported by lazarus serve; leave it out or 0", name,
                               "unsupported_parameter")
        if fields.integer(body, "best_of", n, 1) != n:
            raise APIError(400, "'best_of' is not supported by lazarus serve; use 'n'", "best_of",
                           "unsupported_parameter")
        temperature = fields.number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = fields.number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
        seed = fields.integer(body, "seed", None, -(2 ** 63), 2 ** 64 - 1)
        asked = fields.integer(body, "max_completion_tokens", None, 1)
        asked = fields.integer(body, "max_tokens", asked, 1)
        stops = fields.stops(body)
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

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)


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
    want_logprobs = fields.boolean(body, "logprobs")
    top = fields.integer(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    n = fields.integer(body, "n", 1, 1, MAX_N)
    stream = fields.boolean(body, "stream")
    include_usage = fields.include_usage(body)
    rows = server.rows(body, [prompt], adapter, "messages", top if want_logprobs else None, n)
    job = Job(rows, asyncio.get_running_loop())
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if stream:
        head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": None}

        def chunks(choice: int, step) -> list[dict]:
            out = []
            logprobs = _chat_logprobs(server, [step], top) if want_logprobs else None
            if step.text or (logprobs and logprobs["content"]):
                out.append({"index": choice, "delta": {"content": step.text}, "logprobs": logprobs,
                            "finish_reason": None})
            if step.finish_reason is not None:
                out.append({"index": choice, "delta": {}, "logprobs": None, "finish_reason": step.finish_reason})
            return out

        opening = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                    "finish_reason": None} for i in range(len(rows))]
        return stream_response(server.engine, job, head, chunks, prompt_tokens=len(prompt),
                               include_usage=include_usage, opening=opening)
    steps = await collect(server.engine, request, job)
    if steps is None:  # nobody to answer
        return Response(status_code=499)
    choices = []
    for i, s in enumerate(steps):
        choices.append({"index": i, "message": {"role": "assistant", "content": "".join(x.text for x in s)},
                        "logprobs": _chat_logprobs(server, s, top) if want_logprobs else None,
                        "finish_reason": s[-1].finish_reason})
    return JSONResponse({"id": ident, "object": "chat.completion", "created": created, "model": model,
                         "system_fingerprint": None, "choices": choices, "usage": usage(steps, len(prompt))})


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
    if fields.boolean(body, "echo"):
        raise APIError(400, "'echo' is not supported by lazarus serve", "echo", "unsupported_parameter")
    if body.get("suffix"):
        raise APIError(400, "'suffix' is not supported by lazarus serve", "suffix", "unsupported_parameter")
    prompts = _prompts(server, body)
    logprobs = fields.integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
    n = fields.integer(body, "n", 1, 1, MAX_N)
    stream = fields.boolean(body, "stream")
    include_usage = fields.include_usage(body)
    rows = server.rows(body, prompts, adapter, "prompt", logprobs, n)
    prompt_tokens = sum(len(p) for p in prompts)
    job = Job(rows, asyncio.get_running_loop())
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if stream:
        head = {"id": ident, "object": "text_completion", "created": created, "model": model,
                "system_fingerprint": None}
        offsets = [0] * len(rows)

        def chunks(choice: int, step) -> list[dict]:
            lp = _completion_logprobs(server, [step], offsets[choice]) if logprobs is not None else None
            offsets[choice] += len(step.text)
            if step.text or step.finish_reason is not None or (lp and lp["tokens"]):
                return [{"index": choice, "text": step.text, "logprobs": lp, "finish_reason": step.finish_reason}]
            return []

        return stream_response(server.engine, job, head, chunks, prompt_tokens=prompt_tokens,
                               include_usage=include_usage)
    steps = await collect(server.engine, request, job)
    if steps is None:
        return Response(status_code=499)
    choices = [{"index": i, "text": "".join(x.text for x in s),
                "logprobs": _completion_logprobs(server, s, 0) if logprobs is not None else None,
                "finish_reason": s[-1].finish_reason} for i, s in enumerate(steps)]
    return JSONResponse({"id": ident, "object": "text_completion", "created": created, "model": model,
                         "system_fingerprint": None, "choices": choices, "usage": usage(steps, prompt_tokens)})


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
    # (starlette types every handler as taking any Exception; each of these takes its own class)
    handlers: dict[Any, Callable[..., Any]] = {APIError: _api_error, HTTPException: _http_error,
                                               Exception: _server_error}
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)
    app.state.server = server
    return app
