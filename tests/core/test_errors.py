"""Library errors name config fields; the CLI names the same setting by its flag."""

from __future__ import annotations

import pytest

from lazarus.errors import LazarusError
from lazarus.rewards import parse_reward
from lazarus.training.config import resolve_num_layers


def test_library_errors_name_the_config_field_and_the_cli_its_flag():
    with pytest.raises(LazarusError) as info:
        resolve_num_layers(5, 2)
    assert str(info.value).startswith("num_layers 5 is more than the model's 2 blocks")
    assert info.value.cli_message().startswith("--num-layers 5 is more than the model's 2 blocks")
    with pytest.raises(LazarusError) as info:
        parse_reward("format:x")
    assert str(info.value).startswith("reward 'format:x'")
    assert info.value.cli_message().startswith("--reward 'format:x'")


def test_a_message_about_no_field_reads_the_same_in_both():
    error = LazarusError("data/train.jsonl: line 3 is not JSON")
    assert error.cli_message() == str(error)
    assert LazarusError("env_options x", field="env_options", flag="--env-option").cli_message() == "--env-option x"
