"""Operations: a probe written by a third party as an operation (an options class of setting()
fields, a function returning a typed result, a declared metric field) runs from the CLI, from
Python and from a recipe, where its result field is the stage's key metric and later stages refer
to it with ``{{ stages.NAME.FIELD }}``; eval and generate are operations too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

LAZARUS = str(Path(sys.executable).parent / "lazarus")

PLUGIN = '''
import attrs

import lazarus
from lazarus.operations import operation
from lazarus.specs import ProbeSpec
from lazarus.training.config import setting


@lazarus.hookimpl
def register_probes(register):
    register(ProbeSpec(name="count-blocks", entry="op_probe_plugin:count_blocks",
                       description="Count the model's blocks and parameters."))


@attrs.define(kw_only=True)
class CountOptions:
    model: str | None = setting(None, "Model directory.", required=True, flags=("-m",), metavar="PATH")
    adapter: str | None = setting(None, "Adapter directory.", metavar="DIR")
    greeting: str = setting("blocks", "Word printed before the count.")
    extra: int = setting(0, "Added to the count.", minimum=0)


@attrs.frozen(kw_only=True)
class CountResult:
    blocks: int
    parameters: int
    greeting: str


def show(result, options):
    print(f"{result.greeting}: {result.blocks}")


@operation(options=CountOptions, metric="blocks", show=show)
def count_blocks(model, tokenizer, options: CountOptions) -> CountResult:
    """Count the model's blocks (plus --extra) and its parameters."""
    from mlx.utils import tree_flatten

    parameters = sum(v.size for _, v in tree_flatten(model.parameters()))
    return CountResult(blocks=len(model.blocks) + options.extra, parameters=parameters, greeting=options.greeting)
'''


@pytest.fixture(scope="module")
def tiny_llama(tiny_checkpoint):
    return tiny_checkpoint("llama")


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    """The plugin installed as a distribution (a dist-info with an entry point on PYTHONPATH)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "op_probe_plugin.py").write_text(PLUGIN)
    dist = site / "op_probe_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: op-probe-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lazarus]\ncount-blocks = op_probe_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def lazarus(*args, env):
    return subprocess.run([LAZARUS, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def test_a_third_party_probe_operation_runs_from_the_cli(tiny_llama, plugin_env):
    result = lazarus("introspect", "count-blocks", "-m", tiny_llama, "--greeting", "the model has", env=plugin_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the model has: 2" in result.stdout
    helped = lazarus("introspect", "count-blocks", "--help", env=plugin_env)
    assert "--greeting" in helped.stdout and "--extra" in helped.stdout and "Count the model's blocks" in helped.stdout
    bad = lazarus("introspect", "count-blocks", "-m", tiny_llama, "--extra", "-1", env=plugin_env)
    assert bad.returncode == 2 and "extra must be >= 0" in bad.stderr and "Traceback" not in bad.stderr
    missing = lazarus("introspect", "count-blocks", env=plugin_env)
    assert missing.returncode == 2 and "--model" in missing.stderr
    checked = lazarus("plugins", "check", "op-probe-plugin", env=plugin_env)
    assert checked.returncode == 0, checked.stdout + checked.stderr  # an operation is a valid probe entry


def test_a_third_party_probe_operation_runs_from_python(tiny_llama, plugin_env, plugin_registry):
    import op_probe_plugin

    import lazarus as lz

    result = op_probe_plugin.count_blocks.run(model=str(tiny_llama), extra=1)
    assert isinstance(result, op_probe_plugin.CountResult) and result.blocks == 3
    model, tokenizer, _ = lz.load_model(tiny_llama)
    options = op_probe_plugin.CountOptions(model=str(tiny_llama), greeting="hi")
    assert op_probe_plugin.count_blocks(model, tokenizer, options).blocks == 2
    assert op_probe_plugin.count_blocks.metric_of(result) == 3
    plugin_registry(op_probe_plugin)
    from lazarus.plugins import get

    assert get("probe", "count-blocks").load() is op_probe_plugin.count_blocks


def test_a_third_party_probe_operation_is_a_recipe_stage_with_its_result_as_the_metric(tiny_llama, plugin_env,
                                                                                         tmp_path):
    output = tmp_path / "runs"
    recipe = tmp_path / "r.toml"
    recipe.write_text(textwrap.dedent(f"""
        model = "{tiny_llama}"
        output = "{output}"

        [[stage]]
        introspect = "count-blocks"
        greeting = "the model has"
        extra = 1

        [[stage]]
        generate = "Once upon a time"
        max-tokens = "{{{{ stages.count-blocks.blocks }}}}"
        seed = 1
    """))
    result = lazarus("run", recipe, env=plugin_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the model has: 3" in result.stdout
    assert "blocks 3" in result.stdout + result.stderr  # the run table's key metric
    stage = json.loads((output / "count-blocks" / "stage.json").read_text())
    assert stage["metric"] == "blocks 3" and stage["result"]["blocks"] == 3 and stage["result"]["parameters"] > 0
    assert json.loads((output / "count-blocks" / "result.json").read_text())["blocks"] == 3
    generated = json.loads((output / "generate" / "stage.json").read_text())
    assert 1 <= generated["result"]["generation_tokens"] <= 3  # max-tokens came from the probe's result

    again = lazarus("run", recipe, env=plugin_env)
    assert again.returncode == 0 and again.stderr.count("unchanged, skipped") == 2, again.stderr

    recipe.write_text(recipe.read_text().replace("stages.count-blocks.blocks", "stages.count-blocks.nope"))
    bad = lazarus("run", recipe, "--check", env=plugin_env)
    assert bad.returncode == 2 and "has no result field 'nope'" in bad.stderr and "blocks" in bad.stderr
    recipe.write_text(recipe.read_text().replace('extra = 1', 'extra = "one"'))
    bad = lazarus("run", recipe, "--check", env=plugin_env)
    assert bad.returncode == 2 and "key 'extra' must be int" in bad.stderr


def test_eval_and_generate_are_operations(tiny_llama, tmp_path):
    from lazarus.commands.eval import EvalResult, evaluate
    from lazarus.commands.generate import GenerateResult, generate_text
    from lazarus.data.math import generate, write_math_data

    write_math_data(generate(20, seed=1), tmp_path / "math", valid_fraction=0.1, test_fraction=0.2)
    result = evaluate.run(model=str(tiny_llama), data=str(tmp_path / "math" / "prompts"), reward=("arithmetic",),
                          limit=2, max_tokens=3, output=str(tmp_path / "rows.jsonl"))
    assert isinstance(result, EvalResult) and result.rows == 2 and evaluate.metric == "accuracy"
    assert (tmp_path / "rows.jsonl").is_file() and 0.0 <= result.accuracy <= 1.0
    text = generate_text.run(model=str(tiny_llama), prompt="1 + 1 =", max_tokens=3)
    assert isinstance(text, GenerateResult) and text.generation_tokens <= 3 and text.finish_reason
