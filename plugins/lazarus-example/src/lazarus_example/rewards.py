"""The example's reward function: the code a spec's ``entry`` points at.

Reward functions are batched, as in TRL: one call scores a whole batch of completions and returns
one value per completion (a number, or None where the reward does not apply).
"""

from __future__ import annotations

from lazarus.errors import LazarusError


def keyword_reward(prompts: list, completions: list[str], records: list[dict]) -> list[float]:
    """1.0 for each completion that contains its record's ``keyword`` (case-insensitive), else 0.0."""
    scores = []
    for row, (completion, record) in enumerate(zip(completions, records, strict=True)):
        keyword = record.get("keyword")
        if not keyword:
            raise LazarusError(f"the keyword reward needs a 'keyword' field in each record (row {row} has none)")
        scores.append(1.0 if str(keyword).lower() in completion.lower() else 0.0)
    return scores
