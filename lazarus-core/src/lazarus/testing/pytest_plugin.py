"""Pytest fixtures for Lazarus plugins, registered by ``lazarus-core``'s ``pytest11`` entry point.

Nothing to configure: with ``lazarus-core`` installed, any test can ask for

- ``tiny_checkpoint(family="llama", seed=0, dtype="float32", **config_overrides) -> Path``:
  a random checkpoint of an installed family in Hugging Face layout (cached per session);
- ``tiny_dataset(kind="completion", count=16, seed=0) -> Path``: a directory with
  ``train.jsonl`` and ``valid.jsonl`` of one record kind (completion, chat, text, preference, prompt);
- ``lazarus_cli(*args) -> CliResult``: the ``lazarus`` CLI run in-process, with exit code and output;
- ``plugin_registry(*plugins, builtins=True) -> Registry``: a registry with only the named
  installed plugins plus plugin objects registered in-process, used by ``lazarus.plugins.get``
  and the CLI for the rest of the test.

This module imports only pytest and the standard library at import time (every pytest run in an
environment with ``lazarus-core`` loads it).
"""

from __future__ import annotations

import json
import random

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory ``tiny_checkpoint(family="llama", seed=0, dtype="float32", **config_overrides) -> Path``.

    Writes (once per session and argument set) a random checkpoint with
    ``lazarus.models.create.create_checkpoint``: config.json, model.safetensors, tokenizer files,
    generation_config.json and lazarus.json, built from the family's ``tiny_config`` (2 layers,
    hidden 64, vocab 512 for the first-party families). ``config_overrides`` update that config
    (e.g. ``sliding_window=4``). The directory is shared by every test of the session: copy it
    (``shutil.copytree``) before changing anything in it.
    """
    from lazarus.models.create import create_checkpoint

    made = {}

    def make(family: str = "llama", seed: int = 0, dtype: str = "float32", **config_overrides):
        key = (family, seed, dtype, json.dumps(config_overrides, sort_keys=True))
        if key not in made:
            root = tmp_path_factory.mktemp(f"tiny-{family}")
            made[key] = create_checkpoint(family, root / "model", seed=seed, dtype=dtype,
                                          config_overrides=config_overrides)
        return made[key]

    return make


#: record kinds tiny_dataset writes (as lazarus.data.records reads them)
RECORD_KINDS = ("completion", "chat", "text", "preference", "prompt")


def arithmetic_record(kind: str, rng: random.Random) -> dict:
    """One small arithmetic record of ``kind``; ``prompt`` records carry the ``answer`` field."""
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    question, answer = f"What is {a} + {b}?", str(a + b)
    if kind == "completion":
        return {"prompt": question, "completion": f" {answer}"}
    if kind == "chat":
        return {"messages": [{"role": "user", "content": question},
                             {"role": "assistant", "content": answer}]}
    if kind == "text":
        return {"text": f"{question} {answer}"}
    if kind == "preference":
        return {"prompt": question, "chosen": f" {answer}", "rejected": f" {a + b + 1}"}
    if kind == "prompt":
        return {"prompt": question, "answer": answer}
    raise ValueError(f"unknown record kind {kind!r}; use one of {', '.join(RECORD_KINDS)}")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Factory ``tiny_dataset(kind="completion", count=16, seed=0) -> Path`` of a directory with
    ``train.jsonl`` (``count`` records) and ``valid.jsonl`` (a quarter as many, at least 2) of
    small arithmetic records of one kind: ``completion`` {prompt, completion}, ``chat`` {messages},
    ``text`` {text}, ``preference`` {prompt, chosen, rejected} or ``prompt`` {prompt, answer}.
    Cached per session and argument set; copy before changing."""
    made = {}

    def make(kind: str = "completion", count: int = 16, seed: int = 0):
        key = (kind, count, seed)
        if key not in made:
            rng = random.Random(seed)
            rows = {split: [arithmetic_record(kind, rng) for _ in range(n)]
                    for split, n in (("train", count), ("valid", max(2, count // 4)))}
            root = tmp_path_factory.mktemp(f"data-{kind}")
            for split, records in rows.items():
                (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            made[key] = root
        return made[key]

    return make


class CliResult:
    """What one ``lazarus`` run gave: ``exit_code``, ``stdout``, ``stderr``, ``output`` (both)."""

    def __init__(self, exit_code: int, stdout: str, stderr: str, output: str) -> None:
        self.exit_code, self.stdout, self.stderr, self.output = exit_code, stdout, stderr, output

    def json(self):
        """``stdout`` parsed as JSON (after asserting exit code 0)."""
        assert self.exit_code == 0, self.output
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"CliResult(exit_code={self.exit_code}, output={self.output[-500:]!r})"


@pytest.fixture
def lazarus_cli():
    """``lazarus_cli(*args, input=None, env=None) -> CliResult``: run ``lazarus ARGS`` in-process
    (click's runner), as a user would from a shell. Arguments are turned into strings; a
    :class:`LazarusError` shows up as ``exit_code == 2`` with its one line in ``stderr``; any other
    exception propagates so the test shows its traceback."""
    from click.testing import CliRunner

    from lazarus.cli import main

    def run(*args, input: str | None = None, env: dict | None = None) -> CliResult:
        runner = CliRunner()
        result = runner.invoke(main, [str(a) for a in args], input=input, env=env,
                               prog_name="lazarus", catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr, result.output)

    return run


@pytest.fixture
def plugin_registry(monkeypatch):
    """Factory ``plugin_registry(*plugins, builtins=True) -> Registry``.

    Each of ``plugins`` is either the name of an installed plugin (entry-point or distribution
    name) or an object holding ``@lazarus.hookimpl`` functions (a module or a class) registered
    in-process under its ``__name__``. The registry holds the core's built-ins (unless
    ``builtins=False``) and exactly those plugins; until the test ends it is the one
    ``lazarus.plugins.get`` and the CLI use. A plugin that fails is listed ``failed`` with its
    error, as in ``lazarus plugins list``.
    """
    from lazarus import builtins as core_builtins
    from lazarus import plugins as plugin_module

    def make(*plugins, builtins: bool = True):
        registry = plugin_module.Registry()
        if builtins:
            registry.load_builtins(core_builtins)
        installed = [p for p in plugins if isinstance(p, str)]
        monkeypatch.setenv("LAZARUS_LOAD_PLUGINS", ",".join(installed))
        monkeypatch.delenv("LAZARUS_DISABLE_PLUGINS", raising=False)
        registry.load_entry_points()
        missing = [name for name in installed if not any(
            name in (record.name, record.distribution) for record in registry.plugins.values())]
        if missing:
            raise LookupError(f"no installed plugin named {', '.join(missing)}; installed: "
                              f"{', '.join(sorted(registry.plugins))}")
        # the ones not asked for are listed as blocked; a test registry shows only what it holds
        registry.plugins = {n: r for n, r in registry.plugins.items() if r.status != "blocked"}
        for plugin in plugins:
            if not isinstance(plugin, str):
                name = getattr(plugin, "__name__", type(plugin).__name__)
                registry.add_plugin(plugin, name=name.rsplit(".", 1)[-1].replace("_", "-"))
        monkeypatch.setattr(plugin_module, "_REGISTRY", registry)
        return registry

    return make
