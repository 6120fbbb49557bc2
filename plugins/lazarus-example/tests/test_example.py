"""The example plugin is discovered like any pip-installed plugin and its pieces work."""

from __future__ import annotations

import json
import subprocess
import sys


def lazarus(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lazarus.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_listed_with_its_distribution_and_what_it_provides():
    rows = {row["name"]: row for row in json.loads(lazarus("plugins", "list", "--json").stdout)}
    row = rows["example"]
    assert (row["distribution"], row["version"], row["status"]) == ("lazarus-example", "0.1.0", "loaded")
    assert row["provides"] == {"reward-functions": ["keyword"], "commands": ["reward"]}


def test_reward_command_scores_with_the_registered_function():
    hit = lazarus("reward", "keyword", "--completion", "The ANSWER is 42", "--field", "keyword=answer")
    miss = lazarus("reward", "keyword", "--completion", "no idea", "--field", "keyword=answer")
    assert (hit.returncode, hit.stdout.strip()) == (0, "1")
    assert (miss.returncode, miss.stdout.strip()) == (0, "0")


def test_missing_field_is_a_one_line_error():
    result = lazarus("reward", "keyword", "--completion", "text")
    assert result.returncode == 2
    assert "needs a 'keyword' field" in result.stderr and "Traceback" not in result.stderr


def test_reward_function_is_loaded_lazily_through_its_spec():
    from lazarus.plugins import get

    spec = get("reward-function", "keyword")
    assert spec.entry == "lazarus_example.rewards:keyword_reward"
    assert spec.load()("q", "a cat sat", keyword="CAT") == 1.0
