"""Arithmetic problems with exact answers, for SFT, preference and RL data.

:func:`generate` makes ``count`` distinct problems from a seed (Python's ``random.Random``, whose
integer sequence is stable across platforms and versions, so the same seed gives the same
problems). Each :class:`MathProblem` carries an ``expression`` in Python syntax that evaluates to
its ``answer`` (division is always exact), a worked ``completion`` ending in
``"The answer is N."``, and a plausible wrong completion for preference data. Completions start
with a space so that ``prompt + completion`` reads as one text ("What is 2 + 3? 2 + 3 = 5. ...").

:func:`write_math_data` writes ``sft/``, ``preference/``, ``prompts/`` and ``dual-reward/`` directories
of ``train/valid/test.jsonl``; :func:`extract_answer` reads the final "The answer is N" back from a
model's text, :func:`extract_final_number` the final number in any form (the answer sentence or the
last equation's result).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import cast

import attrs

from lazarus.data.records import SPLITS, dumps_jsonl, write_text_atomic
from lazarus.errors import LazarusError

KINDS = ("add", "sub", "mul", "div", "multi", "word")
ANSWER_PREFIX = "The answer is"


@attrs.frozen
class MathProblem:
    """One problem: ``prompt`` text, ``expression`` (Python arithmetic equal to ``answer``), the
    worked ``completion`` ending in "The answer is N.", and a ``wrong_completion`` whose final
    answer ``wrong_answer`` differs from ``answer``."""

    kind: str
    prompt: str
    expression: str
    answer: int
    completion: str
    wrong_answer: int
    wrong_completion: str

    def sft_record(self) -> dict:
        return {"prompt": self.prompt, "completion": self.completion}

    def preference_record(self) -> dict:
        return {"prompt": self.prompt, "chosen": self.completion, "rejected": self.wrong_completion}

    def prompt_record(self) -> dict:
        return {"prompt": self.prompt, "answer": self.answer, "expression": self.expression,
                "kind": self.kind}

    @property
    def operation(self) -> str:
        """The operation that gives the answer (the outermost one of ``expression``): add, sub, mul, div."""
        import ast

        node = cast(ast.BinOp, ast.parse(self.expression, mode="eval").body)  # always a binary operation
        return OPERATIONS[type(node.op).__name__]

    def dual_reward_record(self) -> dict:
        """``{"prompt", "completion", "label"}`` for ``lazarus train dual-reward``: the label is the
        operation that gives the answer (classifier targets e.g. ``"add=' +',sub=' -',mul=' *',div=' /'"``)."""
        return {"prompt": self.prompt, "completion": self.completion, "label": self.operation}


#: ast operator class name -> the operation label of :attr:`MathProblem.operation`
OPERATIONS = {"Add": "add", "Sub": "sub", "Mult": "mul", "Div": "div"}


# -- answers ---------------------------------------------------------------------------------------
_NUMBER = r"(-?\d[\d,]*(?:\.\d+)?|-?\.\d+)"
_PATTERNS = (
    re.compile(ANSWER_PREFIX + r"\s*:?\s*\$?\s*" + _NUMBER, re.IGNORECASE),
    re.compile(r"####\s*\$?\s*" + _NUMBER),
    re.compile(r"\\boxed\{\s*" + _NUMBER + r"\s*\}"),
)


def extract_answer(text: str) -> int | float | None:
    """The final numeric answer in ``text``, or None when there is none.

    Looks for the last ``The answer is N`` (any case), then GSM8K's ``#### N``, then ``\\boxed{N}``;
    thousands separators are allowed. Returns an int for whole numbers, else a float. Text with no
    such marker gives None, so a reward function never credits a bare number by accident.
    """
    if not isinstance(text, str):
        return None
    for pattern in _PATTERNS:
        matches = pattern.findall(text)
        if matches:
            raw = matches[-1].replace(",", "")
            try:
                value = Fraction(raw)
            except (ValueError, ZeroDivisionError):
                continue
            return int(value) if value.denominator == 1 else float(value)
    return None


_EQUATION_RESULT = re.compile(r"=\s*" + _NUMBER)


def extract_final_number(text: str) -> int | float | None:
    """The model's final answer in any form it gives one: the last ``The answer is N`` (or ``#### N``,
    ``\\boxed{N}``: :func:`extract_answer`) when there is one, else the result of the last equation
    (the number after the last ``=``), else None.

    ``" 74 * 5 = 370."`` -> 370 and ``" 74 * 5 = 370. The answer is 370."`` -> 370; text that asks
    another question (``" What is 3 + 4?"``) or states ``= ?`` gives None.
    """
    answer = extract_answer(text)
    if answer is not None or not isinstance(text, str):
        return answer
    matches = _EQUATION_RESULT.findall(text)
    if not matches:
        return None
    try:
        value = Fraction(matches[-1].replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None
    return int(value) if value.denominator == 1 else float(value)


def format_answer(value: int) -> str:
    """The fixed final sentence of every completion: ``"The answer is 42."``."""
    return f"{ANSWER_PREFIX} {value}."


# -- problem makers --------------------------------------------------------------------------------
# each returns (prompt, expression, steps, wrong_steps, answer, wrong_answer); steps are
# (text_template, value) pairs rendered into the worked solution


def _wrong_value(rng: random.Random, answer: int, candidates: Sequence[int]) -> int:
    """A plausible wrong answer: an operator slip if one differs, else off by one or by ten."""
    options = [*candidates, *(answer + d for d in (1, -1, 10, -10))]
    reversed_digits = str(abs(answer))[::-1]
    if len(reversed_digits) > 1:
        options.append(int(reversed_digits) * (1 if answer >= 0 else -1))
    # a slip keeps the sign of a non-negative answer (no "-4 apples")
    options = [o for o in options if o != answer and (answer < 0 or o >= 0)]
    return rng.choice(options)


_ASK = ("What is {q}?", "Compute {q}.", "Calculate {q}.", "Find the value of {q}.", "{q} = ?")


def _binary(rng: random.Random, kind: str) -> tuple[str, str, int, str, int]:
    """Two-digit sums and differences, a one-digit factor times a one- or two-digit number, and
    exact divisions by one digit: ranges a small model can learn to compute exactly."""
    if kind == "add":
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op, answer, slips = "+", a + b, [a - b, a + b + 1]
    elif kind == "sub":
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if a < b and rng.random() < 0.8:  # mostly non-negative results, sometimes negative
            a, b = b, a
        op, answer, slips = "-", a - b, [a + b, b - a]
    elif kind == "mul":
        a, b = rng.randint(2, 9), rng.randint(2, 99)
        if rng.random() < 0.5:
            a, b = b, a
        op, answer, slips = "*", a * b, [a * (b - 1), a * (b + 1), a + b]
    else:  # div: choose the quotient so that the division is exact
        b, answer = rng.randint(2, 9), rng.randint(2, 99)
        a = b * answer
        op, slips = "/", [answer + 1, answer - 1, a // (b + 1)]
    expression = f"{a} {op} {b}"
    wrong = _wrong_value(rng, answer, slips)
    prompt = rng.choice(_ASK).format(q=expression)
    return prompt, expression, answer, f"{expression} = {{}}.", wrong


def _multi(rng: random.Random) -> tuple[str, str, int, list[str], list[str], int]:
    """Two operations; the worked solution shows the intermediate result."""
    shape = rng.randrange(4)
    if shape == 0:  # (a + b) * c
        a, b, c = rng.randint(1, 45), rng.randint(1, 45), rng.randint(2, 9)
        inner, answer = a + b, (a + b) * c
        expression = f"({a} + {b}) * {c}"
        first, second = f"{a} + {b} = {{}}", f"{{}} * {c} = {{}}"
        slip = a + b * c  # forgetting the brackets
    elif shape == 1:  # a * b - c
        a, b = rng.randint(2, 30), rng.randint(2, 9)
        c = rng.randint(1, min(a * b, 99))
        inner, answer = a * b, a * b - c
        expression = f"{a} * {b} - {c}"
        first, second = f"{a} * {b} = {{}}", f"{{}} - {c} = {{}}"
        slip = a * (b - c)
    elif shape == 2:  # a + b * c
        a, b, c = rng.randint(1, 99), rng.randint(2, 20), rng.randint(2, 9)
        inner, answer = b * c, a + b * c
        expression = f"{a} + {b} * {c}"
        first, second = f"{b} * {c} = {{}}", f"{a} + {{}} = {{}}"
        slip = (a + b) * c  # left to right instead of multiplication first
    else:  # (a - b) / c, exact
        c, quotient = rng.randint(2, 9), rng.randint(1, 40)
        b = rng.randint(0, 99)
        a = b + c * quotient
        inner, answer = a - b, quotient
        expression = f"({a} - {b}) / {c}"
        first, second = f"{a} - {b} = {{}}", f"{{}} / {c} = {{}}"
        slip = quotient + 1
    wrong = _wrong_value(rng, answer, [slip])
    prompt = rng.choice(_ASK).format(q=expression)
    steps = [f"First, {first.format(inner)}.", f"Then, {second.format(inner, answer)}."]
    wrong_steps = [steps[0], f"Then, {second.format(inner, wrong)}."]  # the slip is in the last step
    return prompt, expression, answer, steps, wrong_steps, wrong


_NAMES = ("Ana", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kiri",
          "Leo", "Maya", "Noah", "Olga", "Priya", "Quentin", "Rosa", "Sam", "Tariq")
_ITEMS = ("apples", "marbles", "stickers", "books", "pencils", "coins", "shells", "cards", "eggs",
          "stamps")


def _word(rng: random.Random) -> tuple[str, str, int, str, int]:
    """A one-step story problem; the completion states the equation it solves."""
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    template = rng.randrange(4)
    if template == 0:
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        prompt = f"{name} has {a} {item} and gets {b} more from {other}. How many {item} does {name} have now?"
        expression, answer, slips = f"{a} + {b}", a + b, [a - b]
    elif template == 1:
        a = rng.randint(10, 99)
        b = rng.randint(1, a)
        prompt = f"{name} had {a} {item} and gave {b} of them to {other}. How many {item} does {name} have left?"
        expression, answer, slips = f"{a} - {b}", a - b, [a + b]
    elif template == 2:
        a, b = rng.randint(2, 9), rng.randint(2, 15)
        prompt = f"{name} has {a} boxes with {b} {item} in each box. How many {item} is that in total?"
        expression, answer, slips = f"{a} * {b}", a * b, [a + b]
    else:
        b, answer = rng.randint(2, 9), rng.randint(2, 15)
        a = b * answer
        prompt = (f"{name} shares {a} {item} equally among {b} friends. "
                  f"How many {item} does each friend get?")
        expression, slips = f"{a} / {b}", [a - b]
    wrong = _wrong_value(rng, answer, slips)
    return prompt, expression, answer, f"{expression} = {{}}.", wrong


def _make(rng: random.Random, kind: str) -> MathProblem:
    if kind == "multi":
        prompt, expression, answer, steps, wrong_steps, wrong = _multi(rng)
        completion = " ".join(["", *steps, format_answer(answer)])
        wrong_completion = " ".join(["", *wrong_steps, format_answer(wrong)])
    else:
        maker = _word if kind == "word" else (lambda r: _binary(r, kind))
        prompt, expression, answer, equation, wrong = maker(rng)
        completion = f" {equation.format(answer)} {format_answer(answer)}"
        wrong_completion = f" {equation.format(wrong)} {format_answer(wrong)}"
    return MathProblem(kind=kind, prompt=prompt, expression=expression, answer=answer,
                       completion=completion, wrong_answer=wrong, wrong_completion=wrong_completion)


def parse_kinds(kinds: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"add,mul"`` or ``["add", "mul"]`` -> validated tuple; None means all kinds."""
    if kinds is None:
        return KINDS
    names = [k.strip() for k in (kinds.split(",") if isinstance(kinds, str) else kinds) if k.strip()]
    unknown = [k for k in names if k not in KINDS]
    if unknown or not names:
        raise LazarusError(f"unknown problem kind(s) {', '.join(unknown) or '(none given)'}; "
                           f"choose from {', '.join(KINDS)}")
    return tuple(dict.fromkeys(names))


def _question_key(problem: MathProblem) -> str:
    """Two problems are the same question when they share an expression (however it is asked);
    word problems count as the same when the whole story matches."""
    return problem.prompt if problem.kind == "word" else problem.expression


#: consecutive repeats after which a kind counts as used up (its number ranges are finite)
_EXHAUSTED_AFTER = 2000


def generate(count: int, seed: int = 0, kinds: str | Sequence[str] | None = None,
             on_progress: Callable[[int], None] | None = None) -> list[MathProblem]:
    """``count`` distinct problems, kinds taken in turn from ``kinds`` (default: all of them).

    No two problems ask the same question (same expression, or same word problem), so splits
    never leak into each other. A kind whose number ranges are used up drops out of the rotation
    and the others fill in; LazarusError when all are used up. The result is shuffled, so every
    slice (train/valid/test) mixes all kinds. Same ``count``, ``seed`` and
    ``kinds`` give the same problems. ``on_progress(n)`` receives the number of new problems every
    thousand problems (for progress bars).
    """
    if count < 0:
        raise LazarusError(f"count must be at least 0, got {count}")
    active = list(parse_kinds(kinds))
    rng = random.Random(seed)
    problems: list[MathProblem] = []
    seen: set[str] = set()
    repeats = dict.fromkeys(active, 0)
    reported = 0
    turn = 0
    while len(problems) < count:
        if not active:
            raise LazarusError(f"could only make {len(problems)} distinct problems of kinds "
                               f"{', '.join(repeats)}; ask for fewer or add kinds")
        kind = active[turn % len(active)]
        problem = _make(rng, kind)
        key = _question_key(problem)
        if key in seen:
            repeats[kind] += 1
            if repeats[kind] >= _EXHAUSTED_AFTER:
                active.remove(kind)
            continue
        repeats[kind] = 0
        turn += 1
        seen.add(key)
        problems.append(problem)
        if on_progress is not None and len(problems) - reported >= 1000:
            on_progress(len(problems) - reported)
            reported = len(problems)
    if on_progress is not None and len(problems) > reported:
        on_progress(len(problems) - reported)
    # kinds that ran out early would otherwise be missing from the last (valid/test) problems
    rng.shuffle(problems)
    return problems


# -- writing ---------------------------------------------------------------------------------------
LAYOUT = {"sft": MathProblem.sft_record, "preference": MathProblem.preference_record,
          "prompts": MathProblem.prompt_record, "dual-reward": MathProblem.dual_reward_record}


def split_counts(count: int, valid_fraction: float, test_fraction: float) -> dict[str, int]:
    """Problems per split; valid and test get at least one each when the fraction is positive."""
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise LazarusError(f"{name} must be in [0, 1), got {value}")
    if valid_fraction + test_fraction >= 1:
        raise LazarusError("valid_fraction + test_fraction must leave some training data (sum < 1)")
    valid = max(1, round(count * valid_fraction)) if valid_fraction > 0 and count >= 3 else 0
    test = max(1, round(count * test_fraction)) if test_fraction > 0 and count >= 3 else 0
    return {"train": count - valid - test, "valid": valid, "test": test}


def math_output_paths(output: str | Path) -> list[Path]:
    """Every file :func:`write_math_data` writes under ``output``."""
    return [Path(output) / sub / f"{split}.jsonl" for sub in LAYOUT for split in SPLITS]


def write_math_data(problems: Sequence[MathProblem], output: str | Path, *, valid_fraction: float = 0.1,
                    test_fraction: float = 0.1, force: bool = False) -> dict[str, dict[str, int]]:
    """Write ``problems`` as ``OUTPUT/{sft,preference,prompts,dual-reward}/{train,valid,test}.jsonl``.

    Problems are split in order (train first). Existing files are refused unless ``force`` (checked
    before anything is written); each file is written atomically. Returns ``{dir: {split: rows}}``.
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise LazarusError(f"{output} is a file; give a directory to write the data into")
    existing = [p for p in math_output_paths(output) if p.exists()]
    if existing and not force:
        shown = ", ".join(str(p) for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise LazarusError(f"refusing to overwrite {len(existing)} existing file(s) ({shown}); "
                           "pass --force to replace them")
    counts = split_counts(len(problems), valid_fraction, test_fraction)
    bounds, start = {}, 0
    for split in SPLITS:
        bounds[split] = (start, start + counts[split])
        start += counts[split]
    written: dict[str, dict[str, int]] = {}
    for sub, to_record in LAYOUT.items():
        written[sub] = {}
        for split in SPLITS:
            lo, hi = bounds[split]
            write_text_atomic(output / sub / f"{split}.jsonl", dumps_jsonl(to_record(p) for p in problems[lo:hi]))
            written[sub][split] = hi - lo
    return written
