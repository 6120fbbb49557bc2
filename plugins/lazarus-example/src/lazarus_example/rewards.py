"""The example's reward function: the code a spec's ``entry`` points at."""

from __future__ import annotations

from lazarus.errors import LazarusError


def keyword_reward(prompt: str, completion: str, keyword: str | None = None, **record) -> float:
    """1.0 when ``keyword`` occurs in ``completion`` (case-insensitive), else 0.0."""
    if not keyword:
        raise LazarusError("the keyword reward needs a 'keyword' field in each record")
    return 1.0 if keyword.lower() in completion.lower() else 0.0
