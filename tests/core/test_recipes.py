"""`lazarus run RECIPE`: stages composed from plugin names run in order and chain their adapters,
everything is checked before anything runs, unchanged stages are skipped, a changed one re-runs
with the stages after it, a stopped training stage resumes, and a third-party plugin's stage runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lazarus.cli import main

LAZARUS = str(Path(sys.executable).parent / "lazarus")


@pytest.fixture(scope="module")
def tiny_llama(tiny_checkpoint):
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def math_dirs(tmp_path_factory):
    from lazarus.data.math import generate, write_math_data

    root = tmp_path_factory.mktemp("recipe-math")
    write_math_data(generate(120, seed=2), root, valid_fraction=0.1, test_fraction=0.1)
    return root


def write_recipe(path: Path, model, output, math, *, sft_steps=4, extra="") -> Path:
    path.write_text(textwrap.dedent(f"""
        model = "{model}"
        output = "{output}"

        [[stage]]
        train = "sft"
        data = "{math / 'sft'}"
        max-steps = {sft_steps}
        learning-rate = 2e-3
        num-layers = -1
        rank = 4
        batch-size = 4
        max-seq-length = 96
        eval-interval = 0
        eval-batches = 1
        save-interval = 2

        [[stage]]
        train = "dpo"
        data = "{math / 'preference'}"
        max-steps = 2
        learning-rate = 1e-4
        batch-size = 4
        max-seq-length = 96
        eval-batches = 1

        [[stage]]
        eval = "arithmetic"
        data = "{math / 'prompts'}"
        limit = 4
        max-tokens = 12

        [[stage]]
        introspect = "logit-lens"
        prompt = "What is 2 + 3?"
        {extra}
    """))
    return path


def run(*args):
    return CliRunner().invoke(main, ["run", *map(str, args)])


def stage_record(output: Path, name: str) -> dict:
    return json.loads((output / name / "stage.json").read_text())


@pytest.mark.slow
def test_sft_dpo_eval_lens_chain_and_rerun(tiny_llama, math_dirs, tmp_path):
    import mlx.core as mx
    from mlx_lm import load as mlx_lm_load

    import lazarus

    output = tmp_path / "runs"
    recipe = write_recipe(tmp_path / "r.toml", tiny_llama, output, math_dirs)
    first = run(recipe)
    assert first.exit_code == 0, first.output
    sft, dpo = output / "sft", output / "dpo"
    # the dpo stage started from the sft stage's adapter, and so did everything after it
    assert stage_record(output, "dpo")["adapter"] == str(sft)
    assert json.loads((dpo / "lazarus.json").read_text())["training"]["adapter"] == str(sft)
    assert stage_record(output, "eval-arithmetic")["adapter"] == str(dpo)
    assert stage_record(output, "logit-lens")["adapter"] == str(dpo)
    assert (output / "eval-arithmetic" / "results.jsonl").is_file()
    assert json.loads((output / "logit-lens" / "result.json").read_text())["adapter"] == str(dpo)
    provenance = json.loads((output / "lazarus.json").read_text())
    assert [s["name"] for s in provenance["stages"]] == ["sft", "dpo", "eval-arithmetic", "logit-lens"]
    assert provenance["stages"][1]["provenance"]["trainer"] == "dpo"

    ids = mx.array([[1, 45, 99, 250, 7, 300, 12]])
    theirs, _ = mlx_lm_load(str(tiny_llama), adapter_path=str(dpo))
    ours, _, _ = lazarus.load_model(str(tiny_llama), adapter_path=str(dpo))
    np.testing.assert_allclose(np.array(ours(ids)), np.array(theirs(ids)), atol=1e-4)

    # a re-run runs nothing
    stamps = {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file() and p.name not in ("lazarus.json", ".lazarus.lock")}
    again = run(recipe)
    assert again.exit_code == 0, again.output
    assert again.output.count("unchanged, skipped") == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # one changed option re-runs its stage and the ones after it, not the ones before
    changed = run(recipe, "--set", "dpo.beta=0.3")
    assert changed.exit_code == 0, changed.output
    assert changed.output.count("unchanged, skipped") == 1 and "stage sft: unchanged" in changed.output
    assert stage_record(output, "dpo")["options"]["beta"] == 0.3


def test_check_rejects_unknown_plugin_key_and_type_before_anything_runs(tiny_llama, math_dirs, tmp_path):
    output = tmp_path / "runs"
    cases = [
        ('[[stage]]\ntrain = "nope"\n', "stage 5 (nope): no trainer named 'nope'"),
        ('[[stage]]\ntrain = "sft"\nname = "more"\nmax-stepz = 3\n', "stage 5 (more): unknown key 'max-stepz'"),
        ('[[stage]]\ntrain = "sft"\nname = "more"\nmax-steps = "many"\n', "stage 5 (more): key 'max-steps' must be int"),
        ('[[stage]]\nintrospect = "logit-lens"\nname = "lens2"\ntop-k = "x"\n', "stage 5 (lens2): key 'top-k'"),
        ('[[stage]]\neval = "no-such-reward"\n', "no reward function named 'no-such-reward'"),
        ('[[stage]]\nintrospect = "logit-lens"\nname = "lens3"\ncolour = 1\n', "unknown key 'colour'"),
    ]
    for index, (stage, message) in enumerate(cases):
        recipe = write_recipe(tmp_path / f"bad{index}.toml", tiny_llama, output, math_dirs, extra=stage)
        for args in ((recipe, "--check"), (recipe,)):
            result = run(*args)
            assert result.exit_code == 2, (stage, result.output)
            assert message in result.output and "Traceback" not in result.output, result.output
            assert f"bad{index}.toml" in result.output
    assert not output.exists()  # nothing ran, nothing was written
    good = run(write_recipe(tmp_path / "good.toml", tiny_llama, output, math_dirs), "--check")
    assert good.exit_code == 0 and "4 stages OK" in good.output and not output.exists()


@pytest.mark.slow
def test_a_stopped_training_stage_resumes(tiny_llama, math_dirs, tmp_path):
    output = tmp_path / "runs"
    recipe = write_recipe(tmp_path / "r.toml", tiny_llama, output, math_dirs, sft_steps=60)
    proc = subprocess.Popen([LAZARUS, "run", str(recipe)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((output / "sft" / "checkpoints").glob("step-*")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the sft stage did not save a checkpoint"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        text, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, text
    assert "run `lazarus run" in text and "again to resume" in " ".join(text.split())
    assert stage_record(output, "sft")["status"] == "interrupted"
    assert not (output / "dpo").exists()

    resumed = run(recipe, "--set", "dpo.max-steps=1")
    assert resumed.exit_code == 0, resumed.output
    assert "Resuming from" in resumed.output
    assert stage_record(output, "sft")["status"] == "done"
    rows = [json.loads(line) for line in (output / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 60


def test_a_third_party_plugins_stage_runs(tiny_llama, math_dirs, tmp_path):
    """A probe from a distribution installed in the test (a dist-info with an entry point on
    PYTHONPATH) is a recipe stage by its name, with its own option keys checked."""
    site = tmp_path / "site"
    (site / "recipe_probe_plugin.py").parent.mkdir(parents=True)
    (site / "recipe_probe_plugin.py").write_text(textwrap.dedent('''
        import click
        import lazarus
        from lazarus.specs import ProbeSpec

        @lazarus.hookimpl
        def register_probes(register):
            register(ProbeSpec(name="count-blocks", entry="recipe_probe_plugin:count_blocks",
                               description="Print how many blocks the model has."))

        @click.command()
        @click.option("--model", required=True)
        @click.option("--adapter", default=None)
        @click.option("--json", "json_path", default=None)
        @click.option("--greeting", default="blocks")
        def count_blocks(model, adapter, json_path, greeting):
            import json, pathlib
            from lazarus.loader import load_model
            net, _, _ = load_model(model, adapter_path=adapter)
            click.echo(f"{greeting}: {len(net.blocks)}")
            pathlib.Path(json_path).write_text(json.dumps({"blocks": len(net.blocks), "adapter": adapter}))
    '''))
    dist = site / "recipe_probe_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: recipe-probe-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lazarus]\ncount-blocks = recipe_probe_plugin\n")
    output = tmp_path / "runs"
    recipe = tmp_path / "r.toml"
    recipe.write_text(textwrap.dedent(f"""
        model = "{tiny_llama}"
        output = "{output}"
        [[stage]]
        introspect = "count-blocks"
        greeting = "the model has"
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([LAZARUS, "run", str(recipe)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the model has: 2" in result.stdout
    assert json.loads((output / "count-blocks" / "result.json").read_text())["blocks"] == 2

    recipe.write_text(recipe.read_text() + 'colour = "red"\n')
    bad = subprocess.run([LAZARUS, "run", str(recipe), "--check"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "unknown key 'colour' for introspect 'count-blocks'" in bad.stderr


def test_the_example_recipes_check(tmp_path, monkeypatch):
    examples = sorted((Path(__file__).parents[2] / "examples" / "recipes").glob("*.toml"))
    assert len(examples) >= 3
    for recipe in (r for r in examples if "\ndata = " in r.read_text()):  # without their data, --check
        result = run(recipe, "--check")                                     # names the missing path
        assert result.exit_code == 2 and "does not exist" in result.output, (recipe, result.output)
    monkeypatch.chdir(tmp_path)  # with the data their header says to generate, they check
    assert CliRunner().invoke(main, ["data", "generate", "math", "--output", "math", "--count", "40"]).exit_code == 0
    for recipe in examples:
        result = run(recipe, "--check")
        assert result.exit_code == 0 and "stages OK" in result.output, (recipe, result.output)


def test_output_that_is_a_file_is_one_line_and_output_can_be_overridden(tiny_llama, math_dirs, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("keep me\n")
    recipe = write_recipe(tmp_path / "r.toml", tiny_llama, taken, math_dirs)
    result = run(recipe)
    assert result.exit_code == 2 and "taken" in result.output and "Traceback" not in result.output
    assert taken.read_text() == "keep me\n"
    lens = tmp_path / "lens.toml"
    lens.write_text(f'model = "{tiny_llama}"\noutput = "{taken}"\n[[stage]]\nintrospect = "logit-lens"\n'
                    'prompt = "1 + 1 ="\n')
    moved = run(lens, "--output", tmp_path / "elsewhere")
    assert moved.exit_code == 0, moved.output
    assert (tmp_path / "elsewhere" / "logit-lens" / "result.json").is_file()
