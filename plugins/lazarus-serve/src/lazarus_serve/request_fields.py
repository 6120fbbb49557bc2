"""Refusing a request: :class:`APIError` (an HTTP status and the OpenAI error fields) and the checks
of single request fields that raise it, so every mistake a client makes is a 4xx with a body
``{"error": {"message", "type", "param", "code"}}``, never a traceback.
"""

from __future__ import annotations

import json
import math
from typing import overload

from starlette.responses import JSONResponse

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
    return JSONResponse(error_body(message, param, code, type), status_code=status)


def error_body(message: str, param: str | None = None, code: str | None = None,
               type: str = "invalid_request_error") -> dict:
    """The OpenAI error object (also sent as the last event of a stream that fails)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise APIError(400, f"'{name}' must be a number, got {json.dumps(value)}", name, "invalid_type")
    if value < low or value > high or (low_open and value == low):
        side = f"> {low:g}" if low_open else f">= {low:g}"
        raise APIError(400, f"'{name}' must be {side} and <= {high:g}, got {value:g}", name, "invalid_value")
    return float(value)


@overload
def integer(body: dict, name: str, default: int, low: int, high: int | None = None) -> int: ...
@overload
def integer(body: dict, name: str, default: int | None, low: int, high: int | None = None) -> int | None: ...
def integer(body: dict, name: str, default: int | None, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"'{name}' must be an integer, got {json.dumps(value)}", name, "invalid_type")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise APIError(400, f"'{name}' must be {bound}, got {value}", name, "invalid_value")
    return value


def boolean(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, f"'{name}' must be true or false, got {json.dumps(value)}", name, "invalid_type")
    return value


def stops(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value) or len(value) > MAX_STOPS:
        raise APIError(400, f"'stop' must be a string or a list of at most {MAX_STOPS} strings", "stop",
                       "invalid_type")
    return tuple(s for s in value if s)


def include_usage(body: dict) -> bool:
    """``stream_options.include_usage``: whether a stream ends with a usage chunk."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object", "stream_options", "invalid_type")
    return boolean(options, "include_usage")
