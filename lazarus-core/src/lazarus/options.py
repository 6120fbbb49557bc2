"""Click parameter types every command shares, so that a bad number is refused where it is typed
(one line, exit 2) and never reaches the work: finite floats and seeds. Imports only click."""

from __future__ import annotations

import math

import click

#: seeds every random generator here accepts, with room for the offsets a run adds (seed + rank ...)
MAX_SEED = 2**32 - 1


class FiniteFloat(click.ParamType):
    """A float that is finite (``nan``, ``inf`` and overflowing literals such as ``1e999`` are
    refused), optionally within ``[minimum, maximum]`` (``min_open``: ``> minimum``)."""

    name = "float"

    def __init__(self, minimum: float | None = None, maximum: float | None = None, *,
                 min_open: bool = False) -> None:
        self.minimum, self.maximum, self.min_open = minimum, maximum, min_open

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
            if not math.isfinite(number):
                self.fail(f"{value!r} is not a finite number", param, ctx)
        low, high = self.minimum, self.maximum
        if low is not None and (number < low or (self.min_open and number == low)):
            self.fail(f"{value} must be {'>' if self.min_open else '>='} {low:g}", param, ctx)
        if high is not None and number > high:
            self.fail(f"{value} must be <= {high:g}", param, ctx)
        return number

    def __repr__(self) -> str:
        return "FINITE_FLOAT"


FINITE_FLOAT = FiniteFloat()
#: ``--seed``: an integer from 0 to 2**32 - 1
SEED = click.IntRange(0, MAX_SEED)


def utf8_problem(text: str) -> str | None:
    """Why ``text`` is not UTF-8 text (bytes a terminal or file passed through undecoded, which
    Python keeps as lone surrogates), or None when it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raw = text[exc.start:exc.end].encode("utf-8", "surrogateescape")
        return f"byte 0x{raw[0]:02x} at character {exc.start + 1} is not UTF-8"
    return None


class Utf8Text(click.ParamType):
    """Text that is valid UTF-8 (prompts, stop strings): non-UTF-8 bytes are refused where typed."""

    name = "text"

    def convert(self, value, param, ctx):
        problem = utf8_problem(value) if isinstance(value, str) else None
        if problem:
            self.fail(f"{value.encode('utf-8', 'surrogateescape')!r}: {problem}; pass UTF-8 text", param, ctx)
        return value


TEXT = Utf8Text()
