"""The example plugin, through Lazarus as a user meets it (fixtures from lazarus-core's pytest plugin)."""

from __future__ import annotations

from lazarus.testing import assert_plugin_valid


def test_listed_with_its_distribution_and_what_it_provides(lazarus_cli):
    rows = {row["name"]: row for row in lazarus_cli("plugins", "list", "--json").json()}
    row = rows["example"]
    assert (row["distribution"], row["version"], row["status"]) == ("lazarus-example", "0.1.0", "loaded")
    assert row["provides"] == {"reward-functions": ["keyword"], "commands": ["reward"]}
    assert_plugin_valid("example")


def test_reward_command_scores_with_the_registered_function(lazarus_cli):
    hit = lazarus_cli("reward", "keyword", "--completion", "The ANSWER is 42", "--field", "keyword=answer")
    miss = lazarus_cli("reward", "keyword", "--completion", "no idea", "--field", "keyword=answer")
    assert (hit.exit_code, hit.stdout.strip()) == (0, "1")
    assert (miss.exit_code, miss.stdout.strip()) == (0, "0")


def test_missing_field_is_a_one_line_error(lazarus_cli):
    result = lazarus_cli("reward", "keyword", "--completion", "text")
    assert result.exit_code == 2
    assert "needs a 'keyword' field" in result.stderr and "Traceback" not in result.output


def test_reward_function_is_loaded_lazily_through_its_spec():
    from lazarus.plugins import get

    spec = get("reward-function", "keyword")
    assert spec.entry == "lazarus_example.rewards:keyword_reward"
    assert spec.load()(["q", "q"], ["a cat sat", "a dog"], [{"keyword": "CAT"}, {"keyword": "cat"}]) == [1.0, 0.0]
