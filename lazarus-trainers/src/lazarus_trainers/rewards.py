"""Built-in reward functions (batched, as in TRL): ``fn(prompts, completions, records) -> list``.

- ``arithmetic``: 1.0 when the completion's final answer (``The answer is N``, ``#### N`` or
  ``\\boxed{N}``, read by :func:`lazarus.data.math.extract_answer`) equals the record's ``answer``
  (or the value of its ``expression``), else 0.0; None for records with neither field.
- ``arithmetic-any``: as ``arithmetic``, but the final number counts in any form the model gives it
  (the answer sentence, else the last equation's result: ``" 74 * 5 = 370."`` scores 1.0), read by
  :func:`lazarus.data.math.extract_final_number`. For measuring what a model can compute whatever
  its answer format; ``format`` scores the format on its own.
- ``format``: 1.0 when the completion ends with the expected final sentence ``The answer is N.``
  (nothing but whitespace after it), 0.5 when that sentence appears elsewhere, else 0.0.
- ``length``: 0 up to a budget of completion tokens (the record's ``token_budget``, default
  :data:`DEFAULT_TOKEN_BUDGET`), then ``-(tokens - budget) / budget``: a penalty growing with each
  token past the budget.
"""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction

from lazarus.data.math import ANSWER_PREFIX, extract_answer, extract_final_number

DEFAULT_TOKEN_BUDGET = 128

_FINAL = re.compile(ANSWER_PREFIX + r"\s*-?\d[\d,]*(?:\.\d+)?\.?\s*$", re.IGNORECASE)
_ANYWHERE = re.compile(ANSWER_PREFIX + r"\s*-?\d", re.IGNORECASE)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(expression: str) -> Fraction | None:
    """Exact value of a Python arithmetic expression of numbers, + - * / and brackets (else None)."""
    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError("not plain arithmetic")

    try:
        return walk(ast.parse(str(expression), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def _expected(record: dict) -> Fraction | None:
    answer = record.get("answer")
    if answer is not None and not isinstance(answer, bool):
        try:
            return Fraction(str(answer).replace(",", "").strip())
        except (ValueError, ZeroDivisionError):
            return None
    if record.get("expression") is not None:
        return _evaluate(record["expression"])
    return None


def _score(completions: list[str], records: list[dict], extract) -> list[float | None]:
    out: list[float | None] = []
    for completion, record in zip(completions, records, strict=True):
        expected = _expected(record)
        if expected is None:
            out.append(None)
            continue
        got = extract(completion)
        out.append(1.0 if got is not None and Fraction(got) == expected else 0.0)
    return out


def arithmetic(prompts: list, completions: list[str], records: list[dict]) -> list[float | None]:
    """1.0 for the exact numeric answer, 0.0 otherwise, None where the record has no answer."""
    return _score(completions, records, extract_answer)


def arithmetic_any(prompts: list, completions: list[str], records: list[dict]) -> list[float | None]:
    """1.0 when the final number in any form (answer sentence, else the last equation's result) is
    the exact answer, 0.0 otherwise, None where the record has no answer."""
    return _score(completions, records, extract_final_number)


def answer_format(prompts: list, completions: list[str], records: list[dict]) -> list[float]:
    """1.0 when the completion ends with "The answer is N.", 0.5 when it says it elsewhere, else 0."""
    return [1.0 if _FINAL.search(c) else 0.5 if _ANYWHERE.search(c) else 0.0 for c in completions]


def length(prompts: list, completions: list[str], records: list[dict]) -> list[float]:
    """0 within the token budget, then minus the overshoot as a fraction of the budget."""
    out = []
    for completion, record in zip(completions, records, strict=True):
        budget = max(1, int(record.get("token_budget") or DEFAULT_TOKEN_BUDGET))
        ids = record.get("completion_ids")
        tokens = len(ids) if ids is not None else len(completion.split())
        out.append(-max(0, tokens - budget) / budget)
    return out
