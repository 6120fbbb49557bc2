"""Recipes: runs composed from plugin names (``lazarus run RECIPE.toml``).

A recipe is a TOML (or YAML, with PyYAML) file::

    model = "path/or/hub-id"
    output = "runs/math"            # each stage writes output/<stage name>/
    [[stage]]
    train = "sft"                   # a trainer; its config keys follow
    data = "math/sft"
    [[stage]]
    eval = "arithmetic"             # reward function(s) scored by `lazarus eval`
    data = "math/prompts/test.jsonl"
    [[stage]]
    introspect = "logit-lens"       # a probe; its options follow
    prompt = "What is 2 + 3?"

A stage names exactly one plugin by kind: ``train`` (trainer), ``eval`` (reward functions, a name
or a list), ``introspect`` (probe), ``generate`` (the prompt; `lazarus generate` options follow)
or ``command`` (a command a plugin adds). ``name`` names the stage (default: the plugin's name,
``-2``, ``-3`` ... for repeats). Option keys are the plugin's own: a trainer's ``--config`` keys,
or the long option names of a command (``max-tokens`` or ``max_tokens``).

Chaining: a training stage's output is the following stages' ``adapter`` (a full fine-tune's output
becomes their ``model``) unless a stage sets ``adapter = "none"``, a directory, or a stage name.

Re-running: each stage has a key, the hash of its plugin, options, inputs (model and data files by
size and time, the adapter it starts from) and the key of the stage before it. A stage whose
``output/<stage>/stage.json`` records the same key as done is skipped; a training stage stopped
half-way resumes from its last checkpoint; a changed stage runs again, and so does every stage
after it. Everything is checked before anything runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import attrs

from lazarus.errors import LazarusError
from lazarus.recipe_checks import (  # checking a stage lives there; these names stay importable here
    RUNNER_TRAIN_KEYS,  # noqa: F401
    _options_by_key,  # noqa: F401
    _where,
    check_stage,
    stage_command,
)

#: stage kinds, in the order they are looked for in a stage table
STAGE_KINDS = ("train", "eval", "introspect", "generate", "command")
TOP_LEVEL_KEYS = ("model", "output", "stage")
STAGE_FILE = "stage.json"


@attrs.define
class Stage:
    """One stage of a recipe, as read and checked."""

    name: str
    kind: str  #: train, eval, introspect, generate, command
    plugin: str  #: the trainer / probe / command name, "eval", or "generate"
    options: dict[str, Any]  #: the plugin's own option keys, as written (after --set)
    adapter: str | None = None  #: "none", a path, a stage name, or None (chain)
    model: str | None = None  #: a stage may name its own model
    rewards: tuple[str, ...] = ()  #: eval stages: NAME[:WEIGHT] specs
    index: int = 0

    @property
    def label(self) -> str:
        """What the stage runs, for people: ``train sft``, ``eval arithmetic``, ``generate``."""
        if self.kind == "eval":
            return f"eval {', '.join(self.rewards)}"
        return self.kind if self.kind == self.plugin else f"{self.kind} {self.plugin}"


@attrs.define
class Recipe:
    path: Path
    model: str
    output: Path
    stages: list[Stage]


# -- reading ---------------------------------------------------------------------------------------
def read_recipe(path: str | Path, overrides: tuple[str, ...] = ()) -> Recipe:
    """Read and check a recipe file; ``overrides`` are ``stage.key=value`` strings (``--set``).

    Raises LazarusError naming the file, stage and key for anything wrong; nothing is run or written.
    """
    path = Path(path)
    from lazarus.training.config import read_settings_file

    raw = read_settings_file(path, what="recipe")
    if not isinstance(raw, dict):
        raise LazarusError(f"{path}: the top level must be a table with model, output and [[stage]] tables")
    unknown = [k for k in raw if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise LazarusError(f"{path}: unknown top-level key {unknown[0]!r}; a recipe has {', '.join(TOP_LEVEL_KEYS)}")
    for key in ("model", "output"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise LazarusError(f"{path}: needs `{key} = \"...\"` at the top")
    tables = raw.get("stage")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise LazarusError(f"{path}: no stages; add [[stage]] tables, each naming one plugin "
                           f"({', '.join(STAGE_KINDS)})")
    stages: list[Stage] = []
    taken: set[str] = set()
    for index, table in enumerate(tables, 1):
        stage = _stage(path, index, dict(table), taken)
        taken.add(stage.name)
        stages.append(stage)
    recipe = Recipe(path=path, model=raw["model"], output=Path(raw["output"]).expanduser(), stages=stages)
    for override in overrides:
        _apply_override(recipe, override)
    for stage in stages:
        check_stage(recipe, stage)
    return recipe


def _stage(path: Path, index: int, table: dict, taken: set[str]) -> Stage:
    where = f"{path}: stage {index}"
    kinds = [k for k in STAGE_KINDS if k in table]
    if len(kinds) != 1:
        found = f"found {', '.join(kinds)}" if kinds else "found none"
        raise LazarusError(f"{where}: a stage names exactly one plugin with one of "
                           f"{', '.join(k + ' = ...' for k in STAGE_KINDS)} ({found})")
    kind = kinds[0]
    value = table.pop(kind)
    rewards: tuple[str, ...] = ()
    if kind == "eval":
        rewards = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else ()
        if not rewards or not all(isinstance(r, str) for r in rewards):
            raise LazarusError(f"{where}: eval = must name a reward function or a list of them, got {value!r}")
        plugin = "eval"
    elif kind == "generate":
        if not isinstance(value, str):
            raise LazarusError(f"{where}: generate = must be the prompt text, got {value!r}")
        table.setdefault("prompt", value)
        plugin = "generate"
    else:
        if not isinstance(value, str) or not value:
            raise LazarusError(f"{where}: {kind} = must name a plugin, got {value!r}")
        plugin = value
    name = table.pop("name", None)
    if name is None:
        base = rewards[0].partition(":")[0] if kind == "eval" else plugin
        base = f"eval-{base}" if kind == "eval" else base
        name, n = base, 2
        while name in taken:
            name, n = f"{base}-{n}", n + 1
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise LazarusError(f"{where}: name = {name!r} must be a plain directory name")
    if name in taken:
        raise LazarusError(f"{where}: the stage name {name!r} is used twice; give one of them `name = ...`")
    adapter = table.pop("adapter", None)
    model = table.pop("model", None)
    for key, value in (("adapter", adapter), ("model", model)):
        if value is not None and not isinstance(value, str):
            raise LazarusError(f"{where} ({name}): {key} must be a string, got {value!r}")
    return Stage(name=name, kind=kind, plugin=plugin, options=table, adapter=adapter, model=model,
                 rewards=rewards, index=index)


def _apply_override(recipe: Recipe, override: str) -> None:
    target, sep, raw_value = override.partition("=")
    stage_name, dot, key = target.partition(".")
    if not sep or not dot or not key:
        raise LazarusError(f"--set {override!r} must look like STAGE.KEY=VALUE (e.g. sft.max-steps=50)")
    stage = next((s for s in recipe.stages if s.name == stage_name), None)
    if stage is None:
        raise LazarusError(f"--set {override!r}: no stage named {stage_name!r}; stages: "
                           f"{', '.join(s.name for s in recipe.stages)}")
    value = _toml_value(raw_value)
    if key in ("adapter", "model"):
        setattr(stage, key, str(value))
    else:
        stage.options[key] = value


def _toml_value(text: str) -> Any:
    """``50`` -> 50, ``true`` -> True, ``"a b"`` -> "a b", ``[1, 2]`` -> list; anything else is a string."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# -- running ------------------------------------------------------------------------------------------
@attrs.define
class StageResult:
    stage: Stage
    status: str  #: ran, resumed, skipped, interrupted, failed
    seconds: float = 0.0
    metric: str = ""
    output: Path | None = None
    key: str | None = None  #: the stage's key (see the module docstring)
    result: dict[str, Any] | None = None  #: what the stage's operation returned (later stages refer to it)


def _weights_fingerprint(model: str) -> Any:
    path = Path(model)
    if not path.is_dir():
        return model  # a hub id or short name: its name is its identity here
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.glob("*.safetensors"))


def _file_fingerprint(value: Any) -> Any:
    """Size and mtime of a file, or of the files in a directory, named by an option value."""
    if not isinstance(value, str) or not value or len(value) > 4096:
        return None
    path = Path(value)
    try:
        if path.is_file():
            return [path.name, path.stat().st_size, path.stat().st_mtime_ns]
        if path.is_dir():
            return sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in path.iterdir() if p.is_file())
    except OSError:
        return None
    return None


class Runner:
    """Runs a checked :class:`Recipe` stage by stage (see the module docstring for the rules)."""

    def __init__(self, recipe: Recipe, *, console=None, force_from: str | None = None) -> None:
        from rich.console import Console

        self.recipe = recipe
        self.console = console or Console(stderr=True)
        self.force_from = force_from
        #: stage name -> its result (and ``output``: its directory), for ``{{ stages.NAME.FIELD }}``
        self.results: dict[str, dict] = {}
        if force_from is not None and force_from not in {s.name for s in recipe.stages}:
            raise LazarusError(f"--from {force_from!r}: no such stage; stages: "
                               f"{', '.join(s.name for s in recipe.stages)}")

    def stage_dir(self, stage: Stage) -> Path:
        return self.recipe.output / stage.name

    def run(self) -> list[StageResult]:
        """Run the stages, holding the recipe output's lock (one live ``lazarus run`` per output)."""
        from lazarus.paths import OutputLock, check_output_path

        option = f"{self.recipe.path}: output ="
        check_output_path(self.recipe.output, kind="dir", option=option)
        with OutputLock(self.recipe.output, option=option) as lock:
            if lock.note:
                self.console.print(f"Note: {lock.note}", markup=False, highlight=False)
            return self._run_stages()

    def _run_stages(self) -> list[StageResult]:
        from lazarus.provenance import sha256_json

        results: list[StageResult] = []
        model, adapter = self.recipe.model, None
        outputs: dict[str, tuple[str, str | None]] = {}  # stage -> (model, adapter) it hands on
        self.results = {}
        previous_key = sha256_json({"recipe_model": self.recipe.model,
                                    "weights": _weights_fingerprint(self.recipe.model)})
        forced = False
        for stage in self.recipe.stages:
            forced = forced or stage.name == self.force_from
            stage_model = stage.model or model
            stage_adapter = self._adapter_for(stage, adapter, outputs)
            key = sha256_json({"previous": previous_key, "kind": stage.kind, "plugin": stage.plugin,
                               "options": stage.options, "rewards": stage.rewards, "model": stage_model,
                               "adapter": stage_adapter, "files": {k: _file_fingerprint(v)
                                                                   for k, v in stage.options.items()},
                               # the adapter's weights: a stage that re-made them makes its followers run
                               "adapter_files": _file_fingerprint(stage_adapter),
                               "model_weights": _weights_fingerprint(stage_model) if stage.model else None})
            result = self._run_stage(stage, key, stage_model, stage_adapter, forced)
            results.append(result)
            self.results[stage.name] = {**(result.result or {}), "output": str(self.stage_dir(stage))}
            if result.status in ("interrupted", "failed"):
                break
            # a stage that ran (its output was missing, changed or forced) makes every later one run
            forced = forced or result.status in ("ran", "resumed")
            previous_key = key
            if stage.kind == "train":
                if self._full_fine_tune(stage):
                    model, adapter = str(self.stage_dir(stage)), None
                else:
                    model, adapter = stage_model, str(self.stage_dir(stage))
                outputs[stage.name] = (model, adapter)
        self._write_provenance(results)
        return results

    # -- chaining ---------------------------------------------------------------------------------
    def _adapter_for(self, stage: Stage, chained: str | None, outputs: dict) -> str | None:
        if stage.adapter is None:
            return chained
        if stage.adapter == "none":
            return None
        if stage.adapter in outputs:
            return outputs[stage.adapter][1]
        return stage.adapter

    def _full_fine_tune(self, stage: Stage) -> bool:
        return stage.options.get("fine_tune_type") == "full"

    # -- one stage --------------------------------------------------------------------------------
    def _run_stage(self, stage: Stage, key: str, model: str, adapter: str | None, forced: bool) -> StageResult:
        from lazarus.checkpoints.atomic import recover_output
        from lazarus.recipe_stages import Outcome, resolve, run_command, run_operation, run_train

        directory = recover_output(self.stage_dir(stage))  # a stage output a killed save left hidden
        record = _read_stage_file(directory)
        if not forced and record and record.get("key") == key and record.get("status") == "done":
            self.console.print(f"[dim]stage {stage.name}: unchanged, skipped[/]")
            return StageResult(stage, "skipped", record.get("seconds", 0.0), record.get("metric", ""), directory,
                               key, record.get("result"))
        resume = (not forced and stage.kind == "train" and record is not None and record.get("key") == key
                  and (directory / "checkpoints").is_dir())
        self.console.rule(f"stage {stage.index}/{len(self.recipe.stages)}: {stage.name} ({stage.label})")
        if adapter:
            self.console.print(f"adapter: {adapter}", highlight=False)
        directory.mkdir(parents=True, exist_ok=True)
        record = {"key": key, "stage": stage.name, "kind": stage.kind, "plugin": stage.plugin, "model": model,
                  "adapter": adapter}
        _write_stage_file(directory, {**record, "status": "running"})
        start = time.perf_counter()
        try:
            options = resolve(stage.options, self.results, _where(self.recipe, stage))
            if stage.kind == "train":
                outcome = run_train(stage, options, model, adapter, directory, resume=resume, console=self.console)
            else:
                from lazarus.operations import Operation

                runner = stage_command(stage)
                if isinstance(runner, Operation):
                    outcome = run_operation(stage, runner, options, model, adapter, directory, console=self.console)
                else:
                    outcome = run_command(stage, runner, options, model, adapter, directory)
        except BaseException as exc:  # never leave a stage marked "running" by a run that ended
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            _write_stage_file(directory, {**record, "status": status, "error": " ".join(str(exc).split())[:500],
                                          "seconds": time.perf_counter() - start})
            raise
        assert isinstance(outcome, Outcome)
        seconds = time.perf_counter() - start
        status = outcome.status
        if status == "done":
            _write_stage_file(directory, {**record, "status": "done", "seconds": seconds, "metric": outcome.metric,
                                          "options": stage.options, "result": outcome.result})
            status = "resumed" if resume else "ran"
        else:
            _write_stage_file(directory, {**record, "status": status})
        return StageResult(stage, status, seconds, outcome.metric, directory, key, outcome.result)

    # -- provenance ------------------------------------------------------------------------------
    def _write_provenance(self, results: list[StageResult]) -> None:
        from lazarus import provenance

        stages = []
        for r in results:
            record = provenance.read(r.output) if r.output is not None and r.output.is_dir() else None
            stages.append({"name": r.stage.name, "kind": r.stage.kind, "plugin": r.stage.plugin,
                           "status": r.status, "seconds": round(r.seconds, 3), "metric": r.metric,
                           "output": str(r.output) if r.output else None,
                           "key": r.key,
                           "provenance": record})
        record = provenance.collect(source_model=self.recipe.model,
                                    weight_files=sorted(Path(self.recipe.model).glob("*.safetensors"))
                                    if Path(self.recipe.model).is_dir() else ())
        record["recipe"] = {"path": str(self.recipe.path), "sha256": provenance.sha256_file(self.recipe.path)}
        record["stages"] = stages
        self.recipe.output.mkdir(parents=True, exist_ok=True)
        provenance.write(self.recipe.output, record)


def _read_stage_file(directory: Path | None) -> dict | None:
    if directory is None:
        return None
    path = directory / STAGE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_stage_file(directory: Path, record: dict) -> None:
    from lazarus.data.records import write_text_atomic

    write_text_atomic(directory / STAGE_FILE, json.dumps(record, indent=2, default=str) + "\n")


def _train_metric(result, headline: tuple[str, ...] = ()) -> str:
    """A training stage's key figure for the run table (:func:`lazarus.recipe_stages.train_metric`)."""
    from lazarus.recipe_stages import train_metric

    return train_metric(result, headline)
