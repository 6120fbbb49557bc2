"""``arith-delegate``: an LLM answers an arithmetic question; it may call the calculator tool or
delegate to an expert instance, through the orchestrator's JSON action format."""

from __future__ import annotations

import json
import random

from lazarus_experts.orchestrator import FORMAT_HELP, Orchestrator, calculator
from lazarus_experts.spaces import Text


class ArithDelegateEnv:
    """Observation: text (the question, then each action's JSON observation). Action: the LLM's
    text, one JSON action. Reward 1.0 for a final answer equal to the true result, else 0; the
    episode ends at the final answer or after ``max_steps`` turns.

    ``experts``: an expert registry directory (or an :class:`ExpertRegistry`) the LLM may delegate
    to; ``tools``: extra ``{name: handler}`` next to ``calculator``.
    """

    name = "arith-delegate"

    def __init__(self, max_steps: int = 6, max_operand: int = 99, experts=None, tools: dict | None = None) -> None:
        from lazarus_experts.experts import ExpertRegistry

        if isinstance(experts, str):
            experts = ExpertRegistry.load(experts)
        self.orchestrator = Orchestrator({"calculator": calculator, **(tools or {})}, experts, max_steps=max_steps)
        self.max_operand = int(max_operand)
        if self.max_operand < 1 or int(max_steps) < 1:
            raise ValueError(f"max_steps and max_operand must be >= 1, got {max_steps!r}, {max_operand!r}")
        self.observation_space = Text()
        self.action_space = Text()
        self.question: str | None = None
        self.answer: int | None = None

    @property
    def instructions(self) -> str:
        return ("Answer the arithmetic question. You may use tools or delegate to experts before you answer. "
                f"{FORMAT_HELP} {self.orchestrator.describe()}")

    def reset(self, seed: int | None = None) -> str:
        rng = random.Random(seed)
        a, b = rng.randint(2, self.max_operand), rng.randint(2, self.max_operand)
        op = rng.choice(["+", "-", "*"])
        self.question = f"What is {a} {op} {b}?"
        self.answer = calculator(f"{a} {op} {b}")
        self.orchestrator.reset(self.question)
        return self.question

    def step(self, action: str) -> tuple[str, float, bool, dict]:
        if self.question is None:
            from lazarus.errors import LazarusError

            raise LazarusError("arith-delegate: call reset() before step()")
        turn = self.orchestrator.handle(str(action))
        reward = 0.0
        if turn.answer is not None:
            reward = float(_number(turn.answer) == self.answer)
        info = {"answer": turn.answer, "expected": self.answer, "steps": self.orchestrator.steps,
                "action": turn.action.kind if turn.action else None}
        return json.dumps(turn.observation), reward, turn.done, info


def _number(text: str):
    try:
        value = float(str(text).strip().rstrip("."))
    except ValueError:
        return None
    return int(value) if value.is_integer() else value
