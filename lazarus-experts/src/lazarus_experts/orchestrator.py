"""The orchestrator: turns an LLM's text into actions, runs them, and hands back observations.

Action format (docs/experts.md): each LLM turn holds one JSON object (text around it, or a
```json fence, is ignored):

    {"action": "tool", "tool": "calculator", "input": {"expression": "12 * (3 + 4)"}}
    {"action": "delegate", "expert": "adder", "input": [[3, 4], [5, 1]]}
    {"action": "think", "thought": "12 * 7 is easier as 10 * 7 + 2 * 7"}
    {"action": "final", "answer": "84"}

``tool`` calls the registered tool handler with ``input``'s keys as keyword arguments;
``delegate`` runs the named expert instance over ``input`` (a list of observation vectors, or one
vector) and returns its actions; ``think`` is recorded and the episode goes on; ``final`` ends it.
Everything that goes wrong (no JSON, malformed JSON, an unknown action, tool or expert, a tool that
raises, bad expert input, the step budget running out) comes back as an observation
``{"error": "..."}``: the episode never crashes. Observations are JSON objects too.
"""

from __future__ import annotations

import ast
import json
import operator
from collections.abc import Callable
from typing import Any

import attrs

ACTIONS = ("tool", "delegate", "think", "final")
FORMAT_HELP = ('Reply with one JSON object: {"action": "tool", "tool": NAME, "input": {...}}, '
               '{"action": "delegate", "expert": NAME, "input": [[...], ...]}, '
               '{"action": "think", "thought": "..."} or {"action": "final", "answer": "..."}.')


@attrs.frozen
class Action:
    """One parsed LLM action: ``kind`` is one of :data:`ACTIONS`; ``target`` the tool or expert."""

    kind: str
    target: str | None = None
    input: Any = None
    text: str = ""


@attrs.frozen
class Tool:
    name: str
    handler: Callable[..., Any]
    description: str = ""


@attrs.define
class Turn:
    """What one LLM turn did: the parsed action (None when it could not be parsed), the
    observation returned to the LLM, whether the episode ended and the final answer if any."""

    text: str
    action: Action | None
    observation: dict
    done: bool
    answer: str | None = None


class ActionError(Exception):
    """An LLM turn that cannot be acted on; its message goes back to the LLM."""


def parse_action(text: str) -> Action:
    """The action in an LLM turn, or :class:`ActionError` saying what is wrong with it."""
    decoder = json.JSONDecoder()
    found, first_error = None, None
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            found, _ = decoder.raw_decode(text, start)
            break
        except json.JSONDecodeError as exc:
            first_error = first_error or exc
    if found is None:
        if first_error is not None:
            raise ActionError(f"malformed JSON ({first_error.msg} at character {first_error.pos}). {FORMAT_HELP}")
        raise ActionError(f"no JSON object found. {FORMAT_HELP}")
    if not isinstance(found, dict):
        raise ActionError(f"the JSON must be an object. {FORMAT_HELP}")
    kind = found.get("action")
    if kind not in ACTIONS:
        raise ActionError(f"unknown action {kind!r}; use one of {', '.join(ACTIONS)}. {FORMAT_HELP}")
    if kind == "tool":
        if not isinstance(found.get("tool"), str):
            raise ActionError('a tool action needs "tool": NAME')
        return Action("tool", found["tool"], found.get("input", {}))
    if kind == "delegate":
        if not isinstance(found.get("expert"), str):
            raise ActionError('a delegate action needs "expert": NAME')
        return Action("delegate", found["expert"], found.get("input"))
    if kind == "think":
        return Action("think", text=str(found.get("thought", "")))
    if "answer" not in found:
        raise ActionError('a final action needs "answer": ...')
    return Action("final", text=str(found["answer"]))


class Orchestrator:
    """Routes parsed actions to tool handlers and expert instances; keeps the transcript.

    ``tools``: ``{name: handler}`` or :class:`Tool` objects; ``experts``: an
    :class:`~lazarus_experts.experts.ExpertRegistry` (or ``{name: expert}``); ``max_steps``: LLM
    turns before the episode ends with a budget observation.
    """

    def __init__(self, tools: dict[str, Callable] | None = None, experts=None, max_steps: int = 8) -> None:
        from lazarus_experts.experts import ExpertRegistry

        self.tools: dict[str, Tool] = {}
        for name, handler in (tools or {}).items():
            self.add_tool(name, handler)
        self.experts = experts if isinstance(experts, ExpertRegistry) else ExpertRegistry(experts or {})
        self.max_steps = max_steps
        self.transcript: list[dict] = []
        self.steps = 0

    def add_tool(self, name: str, handler: Callable | Tool, description: str = "") -> None:
        tool = handler if isinstance(handler, Tool) else Tool(name, handler, description or (handler.__doc__ or "").strip())
        self.tools[name] = tool

    def reset(self, task: str) -> None:
        self.transcript = [{"role": "task", "text": task}]
        self.steps = 0

    def describe(self) -> str:
        """What the LLM may call, for its instructions."""
        tools = "; ".join(f"{t.name}: {t.description.splitlines()[0] if t.description else ''}"
                          for t in self.tools.values()) or "none"
        experts = ", ".join(self.experts.names()) or "none"
        return f"Tools: {tools}. Experts: {experts}."

    def handle(self, text: str) -> Turn:
        """Act on one LLM turn: parse, route, record. Never raises for anything in ``text``."""
        self.steps += 1
        self.transcript.append({"role": "llm", "text": text})
        action, answer, done = None, None, False
        observation: dict[str, Any]
        try:
            action = parse_action(text)
            if action.kind == "final":
                observation, answer, done = {"final": action.text}, action.text, True
            elif action.kind == "think":
                observation = {"ok": "noted; continue"}
            elif action.kind == "tool":
                observation = {"tool": action.target, "result": self._call_tool(action)}
            else:
                observation = {"expert": action.target, "result": self._delegate(action)}
        except ActionError as exc:
            observation = {"error": str(exc)}
        if not done and self.steps >= self.max_steps:
            observation = {**observation,
                           "budget": f"step budget of {self.max_steps} reached; the episode ends without an answer"}
            done = True
        self.transcript.append({"role": "observation", "text": json.dumps(observation)})
        return Turn(text, action, observation, done, answer)

    def _call_tool(self, action: Action):
        assert action.target is not None  # (parse_action names the tool of every tool action)
        tool = self.tools.get(action.target)
        if tool is None:
            raise ActionError(f"unknown tool {action.target!r}; available: {', '.join(self.tools) or 'none'}")
        if not isinstance(action.input, dict):
            raise ActionError(f'tool {action.target!r}: "input" must be an object of named arguments')
        try:
            result = tool.handler(**action.input)
            json.dumps(result)
        except Exception as exc:  # noqa: BLE001 - a failing tool is reported to the LLM, not raised
            raise ActionError(f"tool {action.target!r} failed: {type(exc).__name__}: {exc}") from None
        return result

    def _delegate(self, action: Action):
        from lazarus_experts.experts import act

        assert action.target is not None  # (parse_action names the expert of every delegate action)
        if action.target not in self.experts:
            raise ActionError(f"unknown expert {action.target!r}; available: {', '.join(self.experts.names()) or 'none'}")
        expert = self.experts.get(action.target)
        size = expert.config.observation_size
        rows = action.input
        if isinstance(rows, list) and rows and all(isinstance(v, (int, float)) for v in rows):
            rows = [rows]
        if (not isinstance(rows, list) or not rows or not all(
                isinstance(r, list) and len(r) == size and all(isinstance(v, (int, float)) for v in r) for r in rows)):
            raise ActionError(f"expert {action.target!r} reads a list of observations, each a list of {size} "
                              "numbers, e.g. " + json.dumps([[0] * size]))
        try:
            return act(expert, rows)
        except Exception as exc:  # noqa: BLE001 - a failing expert is reported to the LLM, not raised
            raise ActionError(f"expert {action.target!r} failed: {type(exc).__name__}: {exc}") from None


# -- the calculator tool ---------------------------------------------------------------------------
_OPERATORS: dict[type, Callable[..., Any]] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
              ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculator(expression: str):
    """Evaluate an arithmetic expression (+ - * / // % ** and parentheses), e.g. {"expression": "12 * (3 + 4)"}."""

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ValueError("exponent too large")
            return _OPERATORS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        raise ValueError(f"not arithmetic: {ast.unparse(node)!r}")

    if not isinstance(expression, str) or len(expression) > 200:
        raise ValueError("expression must be a string of at most 200 characters")
    result = value(ast.parse(expression, mode="eval").body)
    return int(result) if isinstance(result, float) and result.is_integer() else result


# -- running an episode with an LLM ---------------------------------------------------------------
def llm_from_model(model, tokenizer, *, max_tokens: int = 96, temperature: float = 0.0, seed: int | None = None):
    """A callable ``llm(messages) -> text`` over a model loaded with ``lazarus.load_model``: the
    chat template when the tokenizer has one, else a plain "Role: text" transcript."""
    from lazarus.generation import SamplingConfig, generate

    sampling = SamplingConfig(temperature=temperature, seed=seed)

    def llm(messages: list[dict]) -> str:
        if getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        else:
            prompt = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"
        return generate(model, tokenizer, prompt, max_tokens=max_tokens, sampling=sampling).text

    return llm


@attrs.define
class Episode:
    transcript: list[dict]
    reward: float
    steps: int
    answer: str | None
    info: dict


def run_episode(env, llm: Callable[[list[dict]], str], seed: int | None = None) -> Episode:
    """One episode of a text environment (``arith-delegate``): the LLM sees the instructions and
    each observation as chat messages and answers with actions until the environment is done."""
    observation = env.reset(seed=seed)
    messages = [{"role": "system", "content": getattr(env, "instructions", FORMAT_HELP)},
                {"role": "user", "content": observation}]
    total, info, steps = 0.0, {}, 0
    done = False
    while not done:
        text = llm(messages)
        observation, reward, done, info = env.step(text)
        total += float(reward)
        steps += 1
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": observation}]
    transcript = env.orchestrator.transcript if hasattr(env, "orchestrator") else messages
    return Episode(transcript, total, steps, info.get("answer"), info)


# -- optional: MCP tools over stdio ------------------------------------------------------------------
def mcp_tools(command: str) -> dict[str, Tool]:
    """The tools of an MCP server started as ``command`` (a shell-style string) over stdio, as
    orchestrator tools. Needs the optional ``mcp`` package; without it this raises
    :class:`LazarusError` saying so. Each call starts the server afresh (simple and stateless)."""
    import asyncio
    import shlex

    from lazarus.errors import LazarusError

    try:
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client
    except ImportError:
        raise LazarusError("MCP tools need the optional mcp package: pip install mcp") from None
    argv = shlex.split(command)
    if not argv:
        raise LazarusError("--mcp: empty command; give the command that starts an MCP server over stdio")
    params = StdioServerParameters(command=argv[0], args=argv[1:])

    async def with_session(work):
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return await work(session)

    async def listing(session):
        return (await session.list_tools()).tools

    try:
        listed = asyncio.run(with_session(listing))
    except Exception as exc:  # noqa: BLE001 - a server that does not start is a user error
        raise LazarusError(f"--mcp {command!r}: cannot list the server's tools ({type(exc).__name__}: {exc})") from None

    def handler_for(name: str):
        def handler(**arguments):
            async def call(session):
                return await session.call_tool(name, arguments)

            result = asyncio.run(with_session(call))
            text = "\n".join(getattr(part, "text", str(part)) for part in result.content)
            if getattr(result, "isError", False):
                raise RuntimeError(text)
            return text

        return handler

    return {t.name: Tool(t.name, handler_for(t.name), t.description or "") for t in listed}
