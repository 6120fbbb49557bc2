"""The README's commands, run verbatim in a fresh directory, as a user who copies them would.

Every `lazarus ...` line of the README's shell blocks is either run here (in order, in one
directory, so later lines find what earlier ones wrote) or listed in EXCLUDED with the reason it
cannot run offline on a tiny model in a test. The placeholder model `M` of the README is made a
real directory first (a tiny random llama, `lazarus models create --output M`), so the lines that
name it run as written. A README line that is in neither list fails the first test: a new
command in the README gets a decision here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

#: README lines that are not run, with the reason
EXCLUDED = {
    "make demo   # creates .venv, installs every distribution (editable), runs `lazarus quickstart`":
        "installs the environment; the quickstart itself is tests/trainers/test_quickstart.py",
    "make test   # creates .venv, installs every distribution (editable), runs the test suite":
        "runs this very suite",
    "lazarus train orpo ... / lazarus train dual-reward ...          # docs/preference.md":
        "`...` stands for options; docs/preference.md's example runs in tests/trainers",
    "lazarus train ppo ... --reward arithmetic                         # value head, GAE; docs/rl.md":
        "`...` stands for options",
    "mlx.launch -n 2 -- lazarus train sft ...                         # data parallel: docs/distributed.md":
        "`...` stands for options; two processes: tests/trainers/test_distributed.py",
    "lazarus run examples/recipes/sft-dpo.toml                        # docs/recipes.md":
        "the example's full length (minutes); tests/test_examples.py runs it in fast settings",
    "lazarus train sft --config run.toml --resume run                 # every option is also a config key":
        "needs a run.toml the README does not show",
    "lazarus train sft --model M-4bit --data math/sft --output qrun   # QLoRA: LoRA on the 4-bit base (GPU; far slower than fp16 on a CPU)":
        "QLoRA on a CPU is far slower; the 4-bit model itself is made and loaded above",
    "lazarus export gguf --model M --adapter run --output model.gguf  # for llama.cpp (llama/mistral/qwen2)":
        "covered by tests/core/test_export.py with its reader",
    'lazarus serve --model M --adapter math=run                     # OpenAI API on 127.0.0.1:8080, model="math" picks the adapter (docs/serve.md)':
        "serves until stopped; plugins/lazarus-serve/tests start it on a free port and talk to it with the openai client",
    'lazarus introspect patch --model M --clean "..." --corrupted "..." --answer " A" --wrong " B"':
        '"..." stands for prompts',
    "lazarus experts run --env arith-delegate --model M               # LLM episode: tools, delegation, transcript":
        "an LLM episode on a random model says nothing; tests/experts runs the orchestrator",
    "lazarus install NAME-or-PATH... [-e PATH] [-U]            # pip into the Python that runs lazarus":
        "a synopsis, and it would pip install",
    "lazarus uninstall NAME...":
        "a synopsis, and it would pip uninstall",
    "lazarus plugins list [--json] [--hook trainers] [--all]   # --all adds the core's built-ins":
        "a synopsis ([...] are optional parts)",
    "lazarus plugins show NAME                                 # what one plugin registers":
        "a synopsis (NAME)",
    "lazarus plugins new reward-function has-answer && lazarus install -e lazarus-has-answer":
        "pip installs into the test environment; tests/core/test_scaffold.py builds and checks it",
    "pytest lazarus-has-answer                                 # fixtures from lazarus-core's pytest plugin":
        "needs the scaffolded plugin installed (above)",
    "lazarus plugins check lazarus-has-answer                  # imports, hooks, names, no mlx at import, entries load":
        "needs the scaffolded plugin installed (above)",
}


def readme_commands() -> list[str]:
    """Command lines of the README's ```bash blocks (comment-only and blank lines left out)."""
    lines, inside = [], False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if inside and line.strip() and not line.lstrip().startswith("#"):
            lines.append(line.rstrip())
    return lines


def test_every_readme_command_is_run_or_excused():
    commands = readme_commands()
    assert commands, "no ```bash block in README.md"
    stale = [line for line in EXCLUDED if line not in commands]
    assert not stale, f"EXCLUDED names lines that are no longer in README.md: {stale}"
    for line in commands:
        assert line in EXCLUDED or line.split()[0] == "lazarus", f"README line not run or excused: {line!r}"


def _argv(line: str) -> list[str]:
    """The line's argv without `lazarus` and its trailing comment."""
    words = shlex.split(line, comments=True)
    assert words[0] == "lazarus"
    return words[1:]


@pytest.mark.slow
def test_readme_commands_run_verbatim(tmp_path, monkeypatch, lazarus_cli):
    monkeypatch.chdir(tmp_path)
    assert lazarus_cli("models", "create", "--family", "llama", "--output", "M").exit_code == 0  # the README's M
    ran = []
    for line in readme_commands():
        if line in EXCLUDED:
            continue
        result = lazarus_cli(*_argv(line))
        assert result.exit_code == 0, f"{line}\n{result.output}"
        ran.append(line)
    assert len(ran) >= 20, ran
    # what a reader of those lines would check
    assert (tmp_path / "run" / "adapters.safetensors").is_file()
    assert (tmp_path / "run-grpo" / "metrics.jsonl").is_file()
    assert (tmp_path / "fused" / "config.json").is_file() and (tmp_path / "M-4bit" / "config.json").is_file()
    assert re.search(r'"reward_mean"', (tmp_path / "run-grpo" / "metrics.jsonl").read_text())


def doc_block(path: Path, containing: str) -> list[str]:
    """The commands of the ```bash block of ``path`` that contains ``containing`` (continuation
    lines joined, comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)
    block = next(b for b in blocks if containing in b)
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.mark.slow
def test_dual_reward_example_of_docs_preference_runs_verbatim(tmp_path, monkeypatch, lazarus_cli):
    import json

    monkeypatch.chdir(tmp_path)
    commands = doc_block(ROOT / "docs" / "preference.md", "train dual-reward")
    assert len(commands) == 2
    for line in commands:
        result = lazarus_cli(*_argv(line))
        assert result.exit_code == 0, f"{line}\n{result.output}"
    rows = [json.loads(line) for line in (tmp_path / "runs" / "dual" / "metrics.jsonl").read_text().splitlines()]
    accuracy = [r["classifier/accuracy"] for r in rows if r.get("split") == "train"]
    assert accuracy[-1] > accuracy[0], accuracy  # the classifier at layer -2 learns the operation
