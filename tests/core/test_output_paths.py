"""Every command that writes, against bad output paths: an existing file where a directory is
needed, a parent that cannot be written, a full disk, and a path with spaces and non-ASCII.
A user sees one line and exit code 2, and nothing they had is lost."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from lazarus.errors import LazarusError
from lazarus.paths import check_output_path, write_error_message

UNWRITABLE = "/proc/lazarus-test/out"  # /proc refuses new entries, even for root


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def adapter(model, tiny_dataset, tmp_path_factory):
    """A one-step LoRA adapter of the tiny llama."""
    from click.testing import CliRunner

    from lazarus.cli import main

    out = tmp_path_factory.mktemp("adapter") / "run"
    result = CliRunner().invoke(main, ["train", "sft", *_train_args(model, tiny_dataset(), out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def _train_args(model, data, output) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--output", str(output), "--max-steps", "1",
            "--save-interval", "0", "--eval-batches", "1", "--max-seq-length", "64", "--rank", "2"]


#: command line of each writing command with OUT as its output path
COMMANDS = {
    "train": lambda m, a, d, out: ["train", "sft", *_train_args(m, d["sft"], out)],
    "adapters fuse": lambda m, a, d, out: ["adapters", "fuse", "--model", m, "--adapter", a, "--output", out],
    "models create": lambda m, a, d, out: ["models", "create", "--family", "llama", "--output", out],
    "data generate": lambda m, a, d, out: ["data", "generate", "math", "--output", out, "--count", "20"],
    "quantize": lambda m, a, d, out: ["quantize", "--model", m, "--output", out],
    "introspect --report": lambda m, a, d, out: ["introspect", "logit-lens", "--model", m, "--prompt", "1 + 1 =",
                                                 "--report", out],
    "introspect --json": lambda m, a, d, out: ["introspect", "logit-lens", "--model", m, "--prompt", "1 + 1 =",
                                               "--json", out],
    "eval": lambda m, a, d, out: ["eval", "--model", m, "--data", d["prompts"], "--split", "valid",
                                  "--reward", "arithmetic", "--max-tokens", "2", "--limit", "2", "--output", out],
    "experts train": lambda m, a, d, out: ["experts", "train", "--env", "reach", "--steps", "1", "--num-envs", "2",
                                           "--output", out],
}
#: commands whose output is a file rather than a directory
FILE_OUTPUTS = {"introspect --json", "eval"}


def _data(tiny_dataset) -> dict:
    return {"sft": tiny_dataset(), "prompts": tiny_dataset("prompt")}


def _args(name, model, adapter, data, out):
    return [str(a) for a in COMMANDS[name](str(model), str(adapter), data, str(out))]


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), result.output
    return lines[-1]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - FILE_OUTPUTS))
def test_an_existing_file_as_output_directory_is_one_line(name, lazarus_cli, model, adapter, tiny_dataset, tmp_path):
    target = tmp_path / "taken"
    target.write_text("keep me\n")
    result = lazarus_cli(*_args(name, model, adapter, _data(tiny_dataset), target))
    line = _one_line_error(result)
    assert "taken" in line and "file" in line
    assert target.read_text() == "keep me\n"


def test_a_directory_as_json_file_is_one_line(lazarus_cli, model, tmp_path):
    result = lazarus_cli(*_args("introspect --json", model, "", {}, tmp_path))
    assert "is a directory" in _one_line_error(result)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_an_unwritable_parent_is_one_line_before_any_work(name, lazarus_cli, model, adapter, tiny_dataset):
    result = lazarus_cli(*_args(name, model, adapter, _data(tiny_dataset), UNWRITABLE))
    line = _one_line_error(result)
    assert UNWRITABLE in line and "cannot write in /proc" in line
    assert "Training" not in result.output  # refused before the model was loaded


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_path_with_spaces_and_non_ascii_works(name, lazarus_cli, model, adapter, tiny_dataset, tmp_path):
    out = tmp_path / "my runs" / "modèle ü 模型" / ("out.json" if name in FILE_OUTPUTS else "out")
    result = lazarus_cli(*_args(name, model, adapter, _data(tiny_dataset), out))
    assert result.exit_code == 0, result.output
    assert out.is_file() if name in FILE_OUTPUTS else any(out.iterdir())


#: how each command is told to replace its earlier output
REPLACE = {"train": ["--overwrite"], "experts train": ["--overwrite"], "models create": ["--force"], "data generate": ["--force"], "eval": ["--force"]}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_full_disk_is_one_line_and_the_previous_output_survives(name, lazarus_cli, model, adapter, tiny_dataset,
                                                                   tmp_path, monkeypatch):
    out = tmp_path / ("out.json" if name in FILE_OUTPUTS else "out")
    args = _args(name, model, adapter, _data(tiny_dataset), out)
    first = lazarus_cli(*args)
    assert first.exit_code == 0, first.output
    before = _snapshot(tmp_path)
    if name == "quantize":  # quantize writes only into a new directory
        args = _args(name, model, adapter, _data(tiny_dataset), tmp_path / "out2")

    def disk_full(*args, **kwargs):  # every writer commits its temporary file or directory by renaming it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", disk_full)
    monkeypatch.setattr(os, "rename", disk_full)
    result = lazarus_cli(*args, *REPLACE.get(name, []))
    monkeypatch.undo()
    line = _one_line_error(result)
    assert "No space left on device" in line and "free some space" in line
    after = _snapshot(tmp_path)
    if name in ("train", "experts train"):  # --overwrite clears the earlier run's checkpoints, metrics, plot first
        before, after = ({k: v for k, v in d.items() if not k.startswith(("out/checkpoints", "out/metrics",
                                                                           "out/loss", "out/return"))}
                         for d in (before, after))
    assert after == before  # the earlier output is intact and no half-written file appeared


# -- the helper itself -------------------------------------------------------------------------------------
def test_check_output_path_kinds(tmp_path):
    (tmp_path / "f").write_text("x")
    assert check_output_path(tmp_path / "new" / "deeper") == (tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert check_output_path(tmp_path / "f", kind="file") == tmp_path / "f"
    with pytest.raises(LazarusError, match="a file of that name exists"):
        check_output_path(tmp_path / "f")
    with pytest.raises(LazarusError, match="is a file, so nothing can be created under it"):
        check_output_path(tmp_path / "f" / "x.json", kind="file")
    with pytest.raises(LazarusError, match="is a directory"):
        check_output_path(tmp_path, kind="file", option="--json")
    with pytest.raises(LazarusError, match="empty path"):
        check_output_path("")
    assert list(tmp_path.iterdir()) == [tmp_path / "f"]


def test_write_errors_of_the_machine_become_one_line_others_do_not():
    assert "free some space" in write_error_message(OSError(errno.ENOSPC, "No space left on device", "/x/y"))
    assert "/x/y" in write_error_message(OSError(errno.EACCES, "Permission denied", "/x/y"))
    assert "disk full" in write_error_message(RuntimeError("[write] Unable to write 8 bytes to file."))
    assert write_error_message(RuntimeError("shapes do not broadcast")) is None
    assert write_error_message(ValueError("bug")) is None
