"""The text ``lazarus:tiny-math`` is pretrained on (steps 1 and 1b of :mod:`lazarus.embedded.build_tiny_math`).

Phase 1 (:func:`pretraining_records`): documents of worked equations in the number ranges of
:mod:`lazarus.data.math` and exercise sheets of questions that are never answered. Phase 2
(:func:`phase2_records`): questions mixed with *unrelated* equations, equations often followed by
"The answer is N.". The held-out questions (:func:`held_out_keys`) appear in neither. Deterministic
for a seed; imports no mlx.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

DATA_SEED = 1234
#: the last fifth (valid + test splits) of `lazarus data generate math --seed 0 --count N` is held out
HELD_OUT_COUNTS = (100, 200, 300, 600, 1000, 2000)
HELD_OUT_FRACTION = 0.2
DOCUMENTS = 200_000
#: share of documents that are exercise sheets (questions only) and plain English
SHEET_FRACTION = 0.25
ENGLISH_FRACTION = 0.03
ITEMS_PER_DOC = (3, 6)


# -- 1. text ---------------------------------------------------------------------------------------
def _question_key(problem) -> str:
    return problem.prompt if problem.kind == "word" else problem.expression


def _worked_steps(problem) -> str:
    """The completion without its final "The answer is N." sentence."""
    from lazarus.data.math import format_answer

    return problem.completion.removesuffix(" " + format_answer(problem.answer)).strip()


def plain_text_lines() -> list[str]:
    """A little English (the tokenizer's embedded sentences), so the model is not numbers only."""
    from lazarus.tokenizer import _SENTENCES

    return [line for line in _SENTENCES.splitlines() if line.strip()]


def held_out_keys() -> set[str]:
    """Question keys (expression, or the whole story) of every held-out problem."""
    from lazarus.data import math

    keys = set()
    for count in HELD_OUT_COUNTS:
        problems = math.generate(count, seed=0)
        keys |= {_question_key(p) for p in problems[len(problems) - max(1, round(count * HELD_OUT_FRACTION)):]}
    return keys


def _binary_equations(held_out: set[str]) -> dict[str, list[str]]:
    """Every two-operand equation of the generator's ranges (held-out ones left out), by kind."""
    out: dict[str, list[tuple[str, int]]] = {"add": [], "sub": [], "mul": [], "div": []}
    for a in range(100):
        for b in range(100):
            out["add"].append((f"{a} + {b}", a + b))
            out["sub"].append((f"{a} - {b}", a - b))
    for a in range(2, 10):
        for b in range(2, 100):
            out["mul"].append((f"{a} * {b}", a * b))
            if b > 9:
                out["mul"].append((f"{b} * {a}", a * b))
            out["div"].append((f"{a * b} / {a}", b))
    return {kind: [f"{e} = {v}." for e, v in rows if e not in held_out] for kind, rows in out.items()}


def _wide_equation(rng: random.Random) -> str:
    """Three-digit-by-two-digit sums and differences: the intermediate steps of two-step problems."""
    a, b = rng.randint(100, 499), rng.randint(0, 99)
    if rng.random() < 0.5:
        return f"{a} - {b} = {a - b}."
    return f"{a} + {b} = {a + b}." if rng.random() < 0.5 else f"{b} + {a} = {a + b}."


def _fresh(rng: random.Random, kind: str, held_out: set[str]):
    from lazarus.data import math

    while True:
        problem = math._make(rng, kind)
        if _question_key(problem) not in held_out:
            return problem


def _equation_item(rng: random.Random, binary: dict[str, list[str]], held_out: set[str]) -> str:
    roll = rng.random()
    if roll < 0.52:
        return rng.choice(binary[("add", "sub", "mul", "div")[int(roll / 0.13)]])
    if roll < 0.62:
        return _wide_equation(rng)
    if roll < 0.84:  # two steps: the result directly, or worked
        problem = _fresh(rng, "multi", held_out)
        if rng.random() < 0.5:
            return f"{problem.expression} = {problem.answer}."
        return f"{problem.expression}: {_worked_steps(problem)}"
    problem = _fresh(rng, "word", held_out)  # a story as a statement, then its equation
    return problem.prompt.rsplit(". ", 1)[0] + ". " + _worked_steps(problem)


def _question_item(rng: random.Random, held_out: set[str]) -> str:
    from lazarus.data import math

    return _fresh(rng, rng.choice(math.KINDS), held_out).prompt


def pretraining_records(seed: int = DATA_SEED, documents: int = DOCUMENTS) -> list[dict]:
    """The pretraining corpus as ``{"text": ...}`` records, shuffled; deterministic for a seed."""
    held_out = held_out_keys()
    binary = _binary_equations(held_out)
    sentences = plain_text_lines()
    rng = random.Random(seed)
    records = []
    for _ in range(documents):
        roll = rng.random()
        if roll < ENGLISH_FRACTION:
            text = " ".join(rng.sample(sentences, 2))
        else:
            n = rng.randint(*ITEMS_PER_DOC)
            sheet = roll < ENGLISH_FRACTION + SHEET_FRACTION
            items = [_question_item(rng, held_out) if sheet else _equation_item(rng, binary, held_out)
                     for _ in range(n)]
            text = " ".join(items)
        records.append({"text": text})
    return records


def write_corpus(work: Path, documents: int = DOCUMENTS) -> tuple[Path, str]:
    """Write ``work/pretrain/{train,valid}.jsonl`` (the first 500 records are valid); returns the
    directory and the data hash."""
    out = work / "pretrain"
    return out, write_records(out, pretraining_records(documents=documents), valid=500)


# -- 1b. the second phase's text ----------------------------------------------------------------------
#: phase 2 continues the pretrained model on documents where questions and *unrelated* equations
#: mix, and equations are often followed by "The answer is N." (never after their own question):
#: arithmetic then works after a question too, and SFT only has to teach the model to answer.
PHASE2_SEED = 7
PHASE2_DOCUMENTS = 8000


def _with_answer_sentence(item: str) -> str:
    results = re.findall(r"= (-?\d+)\.", item)
    return f"{item} The answer is {results[-1]}." if results else item



def phase2_records(seed: int = PHASE2_SEED, documents: int = PHASE2_DOCUMENTS) -> list[dict]:
    """Phase 2's ``{"text": ...}`` records: 45% equation documents, 35% questions mixed with
    unrelated equations, 20% exercise sheets; half the equations end with "The answer is N."."""
    held_out = held_out_keys()
    binary = _binary_equations(held_out)
    rng = random.Random(seed)

    def equation() -> str:
        item = _equation_item(rng, binary, held_out)
        return _with_answer_sentence(item) if rng.random() < 0.5 else item

    records = []
    for _ in range(documents):
        roll, n = rng.random(), rng.randint(3, 5)
        if roll < 0.45:
            items = [equation() for _ in range(n)]
        elif roll < 0.8:
            items = [_question_item(rng, held_out) if rng.random() < 0.4 else equation() for _ in range(n)]
        else:
            items = [_question_item(rng, held_out) for _ in range(n)]
        records.append({"text": " ".join(items)})
    return records

def write_records(out: Path, records: list[dict], valid: int = 100) -> str:
    """``out/{train,valid}.jsonl`` (the first ``valid`` records are valid); returns the data hash."""
    out.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    for name, rows in (("train", records[valid:]), ("valid", records[:valid])):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (out / f"{name}.jsonl").write_text(text, encoding="utf-8")
        digest.update(text.encode())
    return digest.hexdigest()
