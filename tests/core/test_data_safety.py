"""Data safety of the core commands (issue 19) through the CLI: full disks, non-UTF-8 bytes,
permission errors. Each test checks the user's files are as they were."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB file system (tmpfs), where the machine lets us mount one (root on Linux)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root on Linux)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# -- item 7: export gguf on a full disk ----------------------------------------------------------------
def test_export_gguf_on_a_full_disk_is_the_disk_full_line(small_disk, tiny_checkpoint, lazarus_cli):
    pytest.importorskip("gguf")
    keep = small_disk / "notes.txt"
    keep.write_text("the user's file\n")
    before = tree_hashes(small_disk)
    result = lazarus_cli("export", "gguf", "--model", tiny_checkpoint("llama"), "--output", small_disk / "m.gguf")
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: cannot write") and "free some space" in line
    assert "Traceback" not in result.output
    assert tree_hashes(small_disk) == before  # no partial file, no temporary left


def test_gguf_write_errors_that_are_not_a_full_disk_are_one_line(tmp_path):
    from lazarus.paths import write_error_message

    assert "disk full" in write_error_message(RuntimeError("[save_gguf] gguf_append_tensor_data failed"))


# -- item 5: non-UTF-8 bytes ---------------------------------------------------------------------------
BAD = b"\xff\xfe"


def test_non_utf8_output_is_refused_before_training(tiny_checkpoint, tiny_dataset, lazarus_cli, tmp_path,
                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tiny_dataset("completion")
    name = os.fsdecode(b"run-" + BAD)
    result = lazarus_cli("train", "sft", "--model", tiny_checkpoint("llama"), "--data", data, "--output", name,
                         "--max-steps", 1)
    assert result.exit_code == 2 and "is not UTF-8" in result.stderr and "Traceback" not in result.output
    assert "Training" not in result.stderr  # refused before the model loaded
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_non_utf8_config_file_is_one_line(suffix, lazarus_cli, tmp_path):
    config = tmp_path / f"run{suffix}"
    body = b"learning_rate = 1e-4\nmodel = \"" + BAD + b"\"\n" if suffix == ".toml" else b"model: " + BAD + b"\n"
    config.write_bytes(body)
    before = config.read_bytes()
    result = lazarus_cli("train", "sft", "--config", config, "--data", "d")
    assert result.exit_code == 2, result.output
    assert f"{config}: line " in result.stderr and "is not UTF-8" in result.stderr
    assert config.read_bytes() == before


def test_non_utf8_recipe_is_one_line(lazarus_cli, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_bytes(b'model = "m"\n[[stage]]\ntrain = "' + BAD + b'"\n')
    result = lazarus_cli("run", recipe, "--check")
    assert result.exit_code == 2 and "line 3" in result.stderr and "is not UTF-8" in result.stderr


def test_non_utf8_prompt_is_one_line(tiny_checkpoint, lazarus_cli):
    model = tiny_checkpoint("llama")
    result = lazarus_cli("generate", "--model", model, "--prompt", os.fsdecode(b"2 + 2 = " + BAD))
    assert result.exit_code == 2 and "is not UTF-8" in result.stderr and "Traceback" not in result.output


def test_non_utf8_prompt_on_stdin_is_one_line(tiny_checkpoint):
    import sys

    done = subprocess.run([sys.executable, "-m", "lazarus.cli", "generate", "--model", str(tiny_checkpoint("llama")),
                           "--prompt", "-"], input=b"1 + 1 = " + BAD, capture_output=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.decode().strip().splitlines()[-1].startswith("Error: --prompt -: byte 0xff")


def test_error_lines_show_control_characters_as_escapes(lazarus_cli, tmp_path):
    result = lazarus_cli("generate", "--model", "no\nsuch", "--prompt", "x")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "no\\nsuch" in result.stderr


# -- item 8: a permission error on reading says "cannot read" ------------------------------------------
def _as_unprivileged(*args, cwd):
    """Run the CLI without the capabilities that let root read anything (as an ordinary user would)."""
    import shutil
    import sys

    command = [sys.executable, "-m", "lazarus.cli", *map(str, args)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be tested")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("unreadable", ["data", "weights", "model-dir"])
def test_permission_errors_on_reading_say_read(unreadable, tmp_path, tiny_checkpoint, tiny_dataset):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint("llama"), model)
    data = tmp_path / "data.jsonl"
    shutil.copy(tiny_dataset("completion") / "train.jsonl", data)
    target = {"data": data, "weights": model / "model.safetensors", "model-dir": model}[unreadable]
    mode = target.stat().st_mode
    target.chmod(0)
    try:
        done = _as_unprivileged("train", "sft", "--model", model, "--data", data, "--output", tmp_path / "out",
                                "--max-steps", 1, cwd=tmp_path)
    finally:
        target.chmod(mode)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: cannot read ") and "Permission denied" in line, line
    assert "cannot write" not in done.stderr


# -- item 10: plugins and doctor ------------------------------------------------------------------------
def test_plugins_new_with_a_keyword_name_compiles_and_checks(tmp_path, lazarus_cli):
    import compileall

    result = lazarus_cli("plugins", "new", "reward-function", "class", "--output", tmp_path / "p")
    assert result.exit_code == 0, result.output
    assert compileall.compile_dir(str(tmp_path / "p"), quiet=1)
    check = lazarus_cli("plugins", "check", tmp_path / "p")
    assert check.exit_code == 0, check.output


def test_doctor_exits_non_zero_with_a_failed_plugin(lazarus_cli, plugin_registry):
    import types

    import lazarus

    broken = types.ModuleType("broken_plugin")

    @lazarus.hookimpl
    def register_trainers(register):
        raise ValueError("exploded")

    broken.register_trainers = register_trainers
    plugin_registry(broken)
    for args in (("doctor",), ("doctor", "--json")):
        result = lazarus_cli(*args)
        assert result.exit_code == 1 and "exploded" in result.output


def test_plugins_list_names_an_unknown_hook(lazarus_cli):
    result = lazarus_cli("plugins", "list", "--hook", "foo")
    assert result.exit_code == 2 and "--hook foo: no such hook" in result.stderr
    assert "register_trainers" in result.stderr
    assert lazarus_cli("plugins", "list", "--hook", "trainers").exit_code == 0


def test_a_model_or_adapter_under_a_non_utf8_path_is_named_not_called_corrupt(tiny_checkpoint, lazarus_cli,
                                                                             tmp_path):
    import shutil

    model = tmp_path / os.fsdecode(b"model-" + BAD)
    shutil.copytree(tiny_checkpoint("llama"), model)
    before = tree_hashes(model)
    result = lazarus_cli("generate", "--model", model, "--prompt", "hi", "--max-tokens", 2)
    assert result.exit_code == 2 and "is not UTF-8" in result.stderr and "corrupt" not in result.stderr
    result = lazarus_cli("generate", "--model", tiny_checkpoint("llama"), "--adapter", model, "--prompt", "hi")
    assert result.exit_code == 2 and "--adapter" in result.stderr and "is not UTF-8" in result.stderr
    assert tree_hashes(model) == before
