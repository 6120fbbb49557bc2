"""Data safety of training runs (issue 19), through the CLI as a user runs them: what a run must never
do to the files a user already has. Each test hashes the user's files before and after."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pytest

TRAIN = ("--num-layers", "-1", "--rank", "4", "--batch-size", "4", "--eval-batches", "2",
         "--log-interval", "1", "--max-seq-length", "96")


def tree_hashes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (names in ``skip`` left out)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def strict_rows(path: Path) -> list[dict]:
    """metrics.jsonl read by a strict JSON reader (NaN and Infinity are not JSON)."""
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines() if line]


@pytest.fixture
def trained(tmp_path, tiny_llama, math_sft_data, lazarus_cli):
    """A good run: 4 steps, checkpoints at 2 and 4, its final adapter."""
    out = tmp_path / "run"
    result = lazarus_cli("train", "sft", "--model", tiny_llama, "--data", math_sft_data, "--output", out,
                         "--max-steps", 4, "--save-interval", 2, "--learning-rate", "1e-3", *TRAIN)
    assert result.exit_code == 0, result.output
    return out


# -- item 2: divergence stops the run and keeps the good checkpoints -----------------------------
def test_divergence_stops_without_saving_or_pruning(trained, lazarus_cli):
    before = tree_hashes(trained, skip=("metrics.jsonl",))
    result = lazarus_cli("train", "sft", "--resume", trained, "--max-steps", 8, "--save-interval", 1,
                         "--keep-checkpoints", 1, "--learning-rate", "1e308")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: training diverged at step 5: ")
    assert "lower --learning-rate (now 1e+308)" in lines[-1]
    assert "step-00000004" in lines[-1]  # names the last good checkpoint
    assert "Traceback" not in result.output
    # nothing saved for the bad step, nothing pruned, the final adapter untouched
    assert tree_hashes(trained, skip=("metrics.jsonl",)) == before
    rows = strict_rows(trained / "metrics.jsonl")
    assert rows[-1]["step"] == 5  # the bad step is logged; what follows it never ran


def test_nan_loss_is_null_in_metrics_and_exit_2(tmp_path, tiny_llama, math_sft_data, lazarus_cli):
    out = tmp_path / "nan"
    result = lazarus_cli("train", "sft", "--model", tiny_llama, "--data", math_sft_data, "--output", out,
                         "--max-steps", 6, "--save-interval", 1, "--learning-rate", "1e30", *TRAIN)
    assert result.exit_code == 2, result.output
    assert "training diverged at step" in result.stderr
    rows = strict_rows(out / "metrics.jsonl")
    bad = rows[-1]
    assert bad["diverged"] is True and (bad["loss"] is None or bad["grad_norm"] is None)
    # every checkpoint left holds finite weights: the bad step was never saved
    from lazarus import checkpoints

    for step in (out / "checkpoints").glob("step-*"):
        weights = checkpoints.load("mlx-lm", step).weights
        assert all(math.isfinite(float(abs(v).max().item())) for v in weights.values()), step
    assert not (out / "adapters.safetensors").exists()  # no final adapter from a diverged run


def test_eval_loss_rise_stops_the_run(trained, tmp_path, tiny_llama, math_sft_data, lazarus_cli):
    """Starting from a trained adapter (low first eval loss), a far too large learning rate sends the
    eval loss back up: the run stops at that eval with the rule in its message."""
    good = tmp_path / "good"
    assert lazarus_cli("train", "sft", "--model", tiny_llama, "--data", math_sft_data, "--output", good,
                       "--max-steps", 40, "--save-interval", 0, "--learning-rate", "1e-2", *TRAIN).exit_code == 0
    first = next(r["loss"] for r in strict_rows(good / "metrics.jsonl") if r["split"] == "eval")
    last = [r["loss"] for r in strict_rows(good / "metrics.jsonl") if r["split"] == "eval"][-1]
    assert last < first / 1.4
    out = tmp_path / "wrecked"
    result = lazarus_cli("train", "sft", "--model", tiny_llama, "--adapter", good, "--data", math_sft_data,
                         "--output", out, "--max-steps", 12, "--eval-interval", 2, "--save-interval", 2,
                         "--learning-rate", "3", "--max-grad-norm", "0", *TRAIN)
    assert result.exit_code == 2, result.output
    assert "training diverged at step" in result.stderr
    assert "rose from" in result.stderr and "--max-eval-loss-rise" in result.stderr


def test_eval_rise_rule_can_be_turned_off(tmp_path, tiny_llama, math_sft_data, lazarus_cli):
    from lazarus.errors import TrainingDiverged
    from lazarus_trainers.sft import SFTConfig, SFTTrainer

    trainer = SFTTrainer(SFTConfig(model=str(tiny_llama), data=str(math_sft_data), output=str(tmp_path / "x")))
    trainer._guard_eval(3, 1.3, 0.377, None)  # under max(1.5 x 0.377, 0.377 + 1.0)
    with pytest.raises(TrainingDiverged, match=r"at step 3: eval loss 1\.4000 rose from 0\.3770"):
        trainer._guard_eval(3, 1.4, 0.377, None)
    with pytest.raises(TrainingDiverged, match="the eval loss is nan"):
        trainer._guard_eval(0, float("nan"), None, None)
    trainer.config.max_eval_loss_rise = 0.0
    trainer._guard_eval(3, 100.0, 0.377, None)  # the rise check is off; non-finite still stops


# -- item 1: a resumed run writes where it is resumed ----------------------------------------------
def test_resume_writes_into_the_resumed_copy(trained, tmp_path, lazarus_cli, monkeypatch):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    before = tree_hashes(trained)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # stored paths must not depend on the shell's working directory
    result = lazarus_cli("train", "sft", "--resume", copy, "--max-steps", 6)
    assert result.exit_code == 0, result.output
    assert str(copy) in result.stderr  # "weights in COPY"
    assert tree_hashes(trained) == before  # the original run is untouched
    assert (copy / "checkpoints" / "step-00000006").is_dir()
    assert (copy / "checkpoints" / "latest").read_text().strip() == "step-00000006"
    state = json.loads((copy / "checkpoints" / "step-00000006" / "trainer_state.json").read_text())
    assert state["config"]["output"] == str(copy)
    assert all(Path(state["config"][k]).is_absolute() for k in ("model", "data"))
    assert list(elsewhere.iterdir()) == []


def test_resume_of_a_loose_checkpoint_needs_output(trained, tmp_path, lazarus_cli):
    import shutil

    loose = tmp_path / "loose"
    shutil.copytree(trained / "checkpoints" / "step-00000002", loose)
    before = tree_hashes(trained)
    result = lazarus_cli("train", "sft", "--resume", loose, "--max-steps", 4)
    assert result.exit_code == 2 and "pass --output DIR" in result.stderr
    result = lazarus_cli("train", "sft", "--resume", loose, "--max-steps", 3, "--output", tmp_path / "new")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "new" / "adapters.safetensors").is_file()
    assert tree_hashes(trained) == before


# -- item 3: one live run per output directory -------------------------------------------------------
def _hold_lock(directory: Path):
    """A process that holds ``directory``'s run lock, as a live training run does."""
    import subprocess
    import sys

    code = ("import sys, time; from lazarus.paths import OutputLock; OutputLock(sys.argv[1]).acquire(); "
            "print('ready', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "ready"
    return holder


def test_second_run_into_a_live_run_is_refused(trained, tiny_llama, math_sft_data, lazarus_cli):
    holder = _hold_lock(trained)
    try:
        before = tree_hashes(trained, skip=(".lazarus.lock",))
        for extra in ((), ("--overwrite",)):
            result = lazarus_cli("train", "sft", "--model", tiny_llama, "--data", math_sft_data, "--output",
                                 trained, "--max-steps", 2, *extra, *TRAIN)
            assert result.exit_code == 2, result.output
            assert "another run is writing there" in result.stderr and f"pid {holder.pid}" in result.stderr
        result = lazarus_cli("train", "sft", "--resume", trained, "--max-steps", 6)
        assert result.exit_code == 2 and "another run is writing there" in result.stderr
        # --overwrite did not delete the live run's checkpoints
        assert tree_hashes(trained, skip=(".lazarus.lock",)) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: the next run takes the lock over, with a note
    result = lazarus_cli("train", "sft", "--resume", trained, "--max-steps", 5)
    assert result.exit_code == 0, result.output
    assert "took over" in result.stderr and f"pid {holder.pid}" in result.stderr


# -- item 4: a kill during the final save ------------------------------------------------------------
def _killed_between_renames(out: Path) -> tuple[Path, Path]:
    """The state a save into ``out`` killed between its two renames leaves: ``out`` moved aside to
    ``.out.old-PID-*``, the new copy complete in ``.out.tmp-PID-*``, ``out`` itself missing."""
    import shutil
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    new = out.parent / f".{out.name}.tmp-{dead.pid}-x1y2z3"
    shutil.copytree(out, new)
    old = out.parent / f".{out.name}.old-{dead.pid}-abcd1234"
    out.rename(old)
    return old, new


@pytest.mark.parametrize("reader", ["resume", "adapter", "generate", "next-run"])
def test_readers_recover_an_output_hidden_by_a_killed_save(reader, trained, tiny_llama, math_sft_data,
                                                           lazarus_cli):
    before = tree_hashes(trained)
    _killed_between_renames(trained)
    assert not trained.exists()
    if reader == "resume":
        result = lazarus_cli("train", "sft", "--resume", trained, "--max-steps", 5)
        assert result.exit_code == 0, result.output
    elif reader == "adapter":
        result = lazarus_cli("train", "sft", "--model", tiny_llama, "--data", math_sft_data, "--adapter", trained,
                             "--output", trained.parent / "next", "--max-steps", 1, *TRAIN)
        assert result.exit_code == 0, result.output
    elif reader == "generate":
        result = lazarus_cli("generate", "--model", tiny_llama, "--adapter", trained, "--prompt", "1 + 1 =",
                             "--max-tokens", 2)
        assert result.exit_code == 0, result.output
        assert tree_hashes(trained) == before
    else:  # a new run into the same place finds the earlier run instead of deleting it later
        result = lazarus_cli("train", "sft", "--model", tiny_llama, "--data", math_sft_data, "--output", trained,
                             "--max-steps", 1, *TRAIN)
        assert result.exit_code == 2 and "already holds a training run" in result.stderr
        assert tree_hashes(trained) == before
    assert "restored it from" in result.stderr
    assert not [p for p in trained.parent.iterdir() if p.name.startswith(f".{trained.name}.")]
    assert (trained / "checkpoints" / "step-00000004" / "trainer_state.json").is_file()


def test_a_set_aside_copy_with_newer_checkpoints_is_kept(trained, tiny_llama, math_sft_data, lazarus_cli):
    old, new = _killed_between_renames(trained)
    import shutil

    shutil.rmtree(new)  # only the set-aside copy is left: it is moved back ...
    trained.mkdir()  # ... unless something made a new, empty output there meanwhile
    result = lazarus_cli("train", "sft", "--model", tiny_llama, "--data", math_sft_data, "--output", trained,
                         "--max-steps", 1, *TRAIN)
    assert result.exit_code == 0, result.output
    kept = trained.parent / f"{trained.name}.recovered-{old.name.split('-')[1]}"
    assert (kept / "checkpoints" / "step-00000004" / "trainer_state.json").is_file()
    assert f"kept {kept}" in result.stderr


# -- item 8: silent wrong results ---------------------------------------------------------------------
@pytest.fixture
def other_base(tmp_path_factory, lazarus_cli):
    """A model of the same family and shapes as ``tiny_llama`` but other weights."""
    path = tmp_path_factory.mktemp("other") / "base"
    assert lazarus_cli("models", "create", "--family", "llama", "--output", path, "--seed", 7).exit_code == 0
    return path


def test_adapter_from_another_base_warns_with_both_names(trained, other_base, tiny_llama, lazarus_cli):
    before = tree_hashes(trained)
    result = lazarus_cli("generate", "--model", other_base, "--adapter", trained, "--prompt", "1 + 1 =",
                         "--max-tokens", 2)
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith("Warning: adapter")]
    assert warning and str(tiny_llama) in warning[0] and str(other_base) in warning[0]
    # its own base: no warning, also from a copy of the base elsewhere (same weights)
    result = lazarus_cli("generate", "--model", tiny_llama, "--adapter", trained, "--prompt", "1 + 1 =",
                         "--max-tokens", 2)
    assert "Warning: adapter" not in result.stderr
    assert tree_hashes(trained) == before


def test_resume_onto_another_base_is_refused(trained, other_base, lazarus_cli):
    before = tree_hashes(trained)
    result = lazarus_cli("train", "sft", "--resume", trained, "--model", other_base, "--max-steps", 6)
    assert result.exit_code == 2, result.output
    assert "this run was trained on" in result.stderr and str(other_base) in result.stderr
    assert tree_hashes(trained) == before


def test_output_equal_to_the_model_is_refused(tmp_path, tiny_checkpoint, math_sft_data, lazarus_cli):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint("llama"), model)
    before = tree_hashes(model)
    result = lazarus_cli("train", "sft", "--model", model, "--data", math_sft_data, "--output", model,
                         "--max-steps", 1, *TRAIN)
    assert result.exit_code == 2 and "is the --model directory" in result.stderr
    assert tree_hashes(model) == before


@pytest.fixture
def unanswerable(tmp_path):
    """Prompt records without ``answer`` or ``expression``: the arithmetic reward applies to none."""
    data = tmp_path / "no-answers"
    data.mkdir()
    rows = "".join(json.dumps({"prompt": f"What is {i} plus {i}?"}) + "\n" for i in range(12))
    (data / "train.jsonl").write_text(rows)
    return data


def test_a_reward_that_scores_no_row_stops_grpo(unanswerable, tmp_path, tiny_llama, lazarus_cli):
    before = tree_hashes(unanswerable)
    result = lazarus_cli("train", "grpo", "--model", tiny_llama, "--data", unanswerable, "--reward", "arithmetic",
                         "--output", tmp_path / "g", "--max-steps", 1, "--group-size", 2, "--batch-size", 2)
    assert result.exit_code == 2, result.output
    assert "--reward arithmetic scores none of the first 12 records" in result.stderr
    assert not (tmp_path / "g" / "checkpoints").exists()
    assert tree_hashes(unanswerable) == before


def test_a_reward_that_scores_no_row_stops_eval(unanswerable, tmp_path, tiny_llama, lazarus_cli):
    out = tmp_path / "results.jsonl"
    result = lazarus_cli("eval", "--model", tiny_llama, "--data", unanswerable / "train.jsonl", "--reward",
                         "arithmetic", "--output", out)
    assert result.exit_code == 2 and "nothing would be scored" in result.stderr
    assert "accuracy" not in result.stdout and not out.exists()


# -- item 9: recipes ------------------------------------------------------------------------------------
def _recipe(path: Path, model, output, sft_data, *, sft_extra="", eval_data=None) -> Path:
    import textwrap

    path.write_text(textwrap.dedent(f"""
        model = "{model}"
        output = "{output}"

        [[stage]]
        train = "sft"
        data = "{sft_data}"
        max-steps = 2
        num-layers = -1
        rank = 4
        batch-size = 4
        max-seq-length = 96
        eval-batches = 1
        save-interval = 1
        {sft_extra}

        [[stage]]
        name = "again"
        train = "sft"
        data = "{eval_data or sft_data}"
        max-steps = 1
        num-layers = -1
        rank = 4
        batch-size = 4
        max-seq-length = 96
        eval-batches = 1
        """))
    return path


def test_recipe_check_refuses_missing_data(tmp_path, tiny_llama, math_sft_data, lazarus_cli):
    recipe = _recipe(tmp_path / "r.toml", tiny_llama, tmp_path / "out", math_sft_data,
                     eval_data=tmp_path / "no-such-data")
    before = recipe.read_bytes()
    result = lazarus_cli("run", recipe, "--check")
    assert recipe.read_bytes() == before
    assert result.exit_code == 2, result.output
    assert "stage 2 (again): data = " in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_failed_stage_is_marked_failed(tmp_path, tiny_llama, math_sft_data, lazarus_cli):
    # a learning rate that overflows the weights: the divergence guard stops the stage
    recipe = _recipe(tmp_path / "r.toml", tiny_llama, tmp_path / "out", math_sft_data,
                     sft_extra="learning-rate = 1e308")
    before = tree_hashes(math_sft_data), recipe.read_bytes()
    result = lazarus_cli("run", recipe)
    assert result.exit_code == 2, result.output
    assert (tree_hashes(math_sft_data), recipe.read_bytes()) == before
    assert "training diverged" in result.stderr
    record = json.loads((tmp_path / "out" / "sft" / "stage.json").read_text())
    assert record["status"] == "failed" and "diverged" in record["error"]
    assert not (tmp_path / "out" / "again").exists()


def test_a_deleted_stage_output_reruns_the_stages_after_it(tmp_path, tiny_llama, math_sft_data, lazarus_cli):
    import shutil

    recipe = _recipe(tmp_path / "r.toml", tiny_llama, tmp_path / "out", math_sft_data)
    assert lazarus_cli("run", recipe).exit_code == 0
    later = tmp_path / "out" / "again" / "adapters.safetensors"
    before = hashlib.sha256(later.read_bytes()).hexdigest()
    stamp = later.stat().st_mtime_ns
    shutil.rmtree(tmp_path / "out" / "sft")
    result = lazarus_cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "unchanged, skipped" not in result.output  # sft re-made, so "again" (trained on it) ran too
    assert later.stat().st_mtime_ns != stamp
    assert hashlib.sha256(later.read_bytes()).hexdigest() == before  # the same inputs, the same weights
    again = lazarus_cli("run", recipe)
    assert again.output.count("unchanged, skipped") == 2


# -- item 10: smaller things ----------------------------------------------------------------------------
@pytest.mark.parametrize("option, value, says", [
    ("--num-layers", "0", "adapt at least one block"),
    ("--eval-batches", "0", "measures nothing"),
])
def test_zero_that_meant_something_else_is_refused(option, value, says, tmp_path, tiny_llama, math_sft_data,
                                                   lazarus_cli):
    result = lazarus_cli("train", "sft", "--model", tiny_llama, "--data", math_sft_data, "--output", tmp_path / "o",
                         option, value)
    assert result.exit_code == 2 and says in result.stderr
    assert not (tmp_path / "o").exists()


def test_rollout_sampling_probabilities_are_checked_before_the_model_loads(lazarus_cli, tmp_path):
    for option in ("--top-p", "--min-p"):
        result = lazarus_cli("train", "grpo", "--model", tmp_path / "absent", "--data", "d", option, "2")
        assert result.exit_code == 2 and "must be <= 1.0" in result.stderr, result.output


def test_a_group_that_cannot_fit_is_refused_before_generating(tmp_path, tiny_llama, math_sft_data, lazarus_cli):
    prompts = math_sft_data.parent / "prompts"
    result = lazarus_cli("train", "grpo", "--model", tiny_llama, "--data", prompts, "--reward", "arithmetic",
                         "--output", tmp_path / "g", "--max-steps", 1, "--group-size", 10**7)
    assert result.exit_code == 2, result.output
    assert "more than the" in result.stderr and "lower --group-size" in result.stderr
    assert not (tmp_path / "g" / "checkpoints").exists()


def test_a_reward_that_calls_sys_exit_is_named(tmp_path, tiny_llama, math_sft_data, lazarus_cli, plugin_registry):
    import types

    import lazarus
    from lazarus.specs import RewardFunctionSpec

    plugin = types.ModuleType("quitter")

    @lazarus.hookimpl
    def register_reward_functions(register):
        register(RewardFunctionSpec(name="quits", entry=f"{__name__}:_quits"))

    plugin.register_reward_functions = register_reward_functions
    plugin_registry("lazarus-trainers", "lazarus-families", plugin)
    out = tmp_path / "results.jsonl"
    result = lazarus_cli("eval", "--model", tiny_llama, "--data", math_sft_data.parent / "prompts" / "test.jsonl",
                         "--reward", "quits", "--limit", 2, "--max-tokens", 2, "--output", out)
    assert result.exit_code == 2, result.output
    assert "reward 'quits' called sys.exit(3)" in result.stderr
    assert not out.exists()


def _quits(prompts, completions, records):
    import sys

    if all(c == "" for c in completions):
        return [1.0] * len(completions)  # the up-front applicability probe
    sys.exit(3)


def test_eval_results_and_generated_data_are_readable_like_other_outputs(tmp_path, tiny_llama, math_sft_data,
                                                                          lazarus_cli):
    import stat

    mask = os.umask(0o022)
    try:
        assert lazarus_cli("data", "generate", "math", "--output", tmp_path / "math", "--count", 20).exit_code == 0
        out = tmp_path / "results.jsonl"
        assert lazarus_cli("eval", "--model", tiny_llama, "--data", tmp_path / "math" / "prompts" / "test.jsonl",
                           "--reward", "arithmetic", "--limit", 2, "--max-tokens", 2, "--output", out).exit_code == 0
    finally:
        os.umask(mask)
    for path in [out, *(tmp_path / "math").rglob("*.jsonl")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_a_recipe_resumes_a_stage_a_killed_save_left_hidden(tmp_path, tiny_llama, math_sft_data, lazarus_cli):
    recipe = _recipe(tmp_path / "r.toml", tiny_llama, tmp_path / "out", math_sft_data)
    assert lazarus_cli("run", recipe).exit_code == 0
    stage = tmp_path / "out" / "sft"
    before = tree_hashes(stage)
    _killed_between_renames(stage)
    result = lazarus_cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "restored it from" in result.stderr
    assert result.output.count("unchanged, skipped") == 2  # found again, so nothing re-ran
    assert tree_hashes(stage) == before


def test_experts_train_refuses_a_live_runs_output(tmp_path, lazarus_cli):
    out = tmp_path / "expert"
    out.mkdir()
    holder = _hold_lock(out)
    try:
        result = lazarus_cli("experts", "train", "--env", "reach", "--output", out, "--steps", 1, "--num-envs", 2,
                             "--overwrite")
        assert result.exit_code == 2 and "another run is writing there" in result.stderr
    finally:
        holder.kill()
        holder.wait()
    result = lazarus_cli("experts", "train", "--env", "reach", "--output", out, "--steps", 1, "--num-envs", 2,
                         "--max-episode-steps", 3)
    assert result.exit_code == 0, result.output
    assert "took over" in result.output


def test_experts_train_divergence_saves_nothing(tmp_path, lazarus_cli):
    out = tmp_path / "expert"
    result = lazarus_cli("experts", "train", "--env", "reach", "--output", out, "--num-envs", 2,
                         "--max-episode-steps", 3, "--save-interval", 1, "--steps", 4, "--learning-rate", "1e300")
    assert result.exit_code == 2, result.output
    assert "training diverged at step 1" in result.stderr and "lower --learning-rate (now 1e+300)" in result.stderr
    assert not (out / "checkpoints").exists() and not (out / "expert.safetensors").exists()
    strict_rows(out / "metrics.jsonl")


@pytest.mark.parametrize("line, says", [("learning-rate = nan", "must be float"),
                                        ("warmup-steps = 99999999999", "at most 2147483647"),
                                        ("seed = -1", "must be >= 0")])
def test_recipe_check_refuses_bad_numbers(line, says, tmp_path, tiny_llama, math_sft_data, lazarus_cli):
    recipe = _recipe(tmp_path / "r.toml", tiny_llama, tmp_path / "out", math_sft_data, sft_extra=line)
    result = lazarus_cli("run", recipe, "--check")
    assert result.exit_code == 2 and says in result.stderr, result.output


def test_a_second_lazarus_run_into_a_live_recipe_output_is_refused(tmp_path, tiny_llama, math_sft_data,
                                                                    lazarus_cli):
    recipe = _recipe(tmp_path / "r.toml", tiny_llama, tmp_path / "out", math_sft_data)
    assert lazarus_cli("run", recipe).exit_code == 0
    before = tree_hashes(tmp_path / "out", skip=(".lazarus.lock",))
    holder = _hold_lock(tmp_path / "out")
    try:
        result = lazarus_cli("run", recipe, "--from", "sft")
        assert result.exit_code == 2 and "another run is writing there" in result.stderr
        assert tree_hashes(tmp_path / "out", skip=(".lazarus.lock",)) == before  # stage records untouched
    finally:
        holder.kill()
        holder.wait()


def test_eval_says_nothing_was_scored_when_no_completion_is(tmp_path, tiny_llama, math_sft_data, lazarus_cli,
                                                            plugin_registry):
    """A reward that applies to the records but scores no completion it is given (returns None)."""
    import types

    import lazarus
    from lazarus.specs import RewardFunctionSpec

    plugin = types.ModuleType("picky")

    @lazarus.hookimpl
    def register_reward_functions(register):
        register(RewardFunctionSpec(name="picky", entry=f"{__name__}:_picky"))

    plugin.register_reward_functions = register_reward_functions
    plugin_registry("lazarus-trainers", "lazarus-families", plugin)
    out = tmp_path / "results.jsonl"
    result = lazarus_cli("eval", "--model", tiny_llama, "--data", math_sft_data.parent / "prompts" / "test.jsonl",
                         "--reward", "picky", "--limit", 3, "--max-tokens", 2, "--output", out)
    assert result.exit_code == 2, result.output
    assert "nothing was scored" in result.stderr and "accuracy" not in result.stdout
    assert not out.exists()


def _picky(prompts, completions, records):
    return [1.0 if c == "" else None for c in completions]  # scores only the empty (probe) completion
