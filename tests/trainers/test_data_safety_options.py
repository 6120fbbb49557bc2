"""Random option values for every trainer (and `experts train`, `generate`, `models create`): the
CLI answers with exit 0 or one `Error:` line and exit 2, never a traceback (issue 19, items 2, 5, 6).

Cheap by construction: the model path does not exist, so a run that gets past the option layer
stops at the model with its one-line error; what is tested is that every value is refused (or
accepted) before any work, and that nothing is written.
"""

from __future__ import annotations

import functools
import os

import click
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])

#: what a user may type for a number: finite and not, huge, negative, garbage, non-UTF-8 bytes
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e308", "1e999", "-1", "-0", "0", "1", "2", "-1e-300",
                     "18446744073709551616", "4294967296", "", " ", "abc", "1,2", "lora", "cosine"]),
    st.binary(min_size=1, max_size=6).map(lambda b: b.decode("utf-8", "surrogateescape")),
)


def _value_options(command: click.Command) -> list[str]:
    """The options of ``command`` that take a value (flags and --help left out)."""
    names = []
    for param in command.params:
        if isinstance(param, click.Option) and not param.is_flag and param.opts[0] != "--help":
            names.append(max(param.opts, key=len))
    return names


@functools.cache
def _trainer_commands() -> dict[str, click.Command]:
    from lazarus.commands.train import trainer_command
    from lazarus.plugins import get_registry

    return {name: trainer_command(spec) for name, spec in get_registry().all("trainer").items()}


def _assert_clean(result, tmp_path) -> None:
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("Error: "), result.stderr
    # nothing was written: the model never loaded
    assert [p.name for p in tmp_path.iterdir()] in ([], ["bad.toml"])


TRAINERS = sorted(_trainer_commands())


@pytest.mark.parametrize("trainer", TRAINERS)
@FUZZ
@given(data=st.data())
def test_random_option_values_never_traceback(trainer, data, lazarus_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command = _trainer_commands()[trainer]
    option = data.draw(st.sampled_from([o for o in _value_options(command) if o not in ("--config",)]))
    value = data.draw(values)
    args = ["train", trainer, "--model", "no-such-model", "--data", "no-such-data"]
    result = lazarus_cli(*args, option, value)
    _assert_clean(result, tmp_path)
    for leftover in tmp_path.iterdir():  # an --output that was accepted is still not created
        assert leftover.name == "bad.toml"


@pytest.mark.parametrize("trainer", TRAINERS)
def test_non_finite_values_are_refused_for_every_float_option(trainer, lazarus_cli, tmp_path, monkeypatch):
    from lazarus.plugins import get_registry
    from lazarus.training.config import config_fields, field_kind, option_name

    monkeypatch.chdir(tmp_path)
    cls = get_registry().get("trainer", trainer).load().config_class
    floats = [option_name(f.name) for f in config_fields(cls)
              if f.metadata.get("cli", True) and field_kind(cls, f).base is float and not field_kind(cls, f).many]
    assert "--learning-rate" in floats
    for option in floats:
        for value in ("nan", "inf", "-inf", "1e999"):
            result = lazarus_cli("train", trainer, "--model", "m", "--data", "d", option, value)
            assert result.exit_code == 2, (option, value, result.output)
            assert "is not a finite number" in result.stderr, result.stderr


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_values_in_a_config_file_are_refused(value, lazarus_cli, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(f"learning_rate = {value}\nscale = 20.0\n")
    result = lazarus_cli("train", "sft", "--config", config, "--model", "m", "--data", "d")
    assert result.exit_code == 2 and "learning_rate" in result.stderr and "Traceback" not in result.output


def test_non_finite_values_from_python_are_refused(tmp_path):
    from lazarus.errors import LazarusError
    from lazarus_trainers.sft import SFTConfig, SFTTrainer

    for field, value in (("learning_rate", float("nan")), ("scale", float("inf")), ("max_steps", 10**12)):
        with pytest.raises(LazarusError, match=field):
            SFTTrainer(SFTConfig(model="m", data="d", output=str(tmp_path / "o"), **{field: value}))


#: options whose accepted values set the amount of work of an experts run
SIZES = ("--steps", "--num-envs", "--hidden-size", "--num-layers", "--epochs", "--max-episode-steps")


# accepted values train for real, one short update each (15 examples: about a second)
@FUZZ
@given(option=st.sampled_from(["--seed", "--learning-rate", "--gamma", "--lam", "--clip", "--entropy-coef",
                               "--steps", "--num-envs", "--hidden-size", "--num-layers", "--epochs",
                               "--max-episode-steps", "--save-interval", "--env-option"]), value=values)
def test_experts_train_options_never_traceback(option, value, lazarus_cli, tmp_path, monkeypatch):
    import uuid

    monkeypatch.chdir(tmp_path)
    # a valid but huge amount of work (--steps 10**7, --hidden-size 65536) is no error, only long
    if option in SIZES:
        try:
            huge = abs(int(value)) > 64  # what click accepts for these integer options
        except ValueError:
            huge = False
        assume(not huge)
    if option == "--env-option":
        value = f"max_steps={value}"
    # a fresh output each example: a run left by the previous one would refuse every later value
    # --steps 0 would be refused; --max-episode-steps 2 keeps an accepted run short
    output = tmp_path / f"out-{uuid.uuid4().hex[:8]}"
    result = lazarus_cli("experts", "train", "--env", "reach", "--output", output, "--steps", 1,
                         "--num-envs", 2, "--max-episode-steps", 2, option, value)
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert result.stderr.strip().splitlines()[-1].startswith("Error: ")


@pytest.mark.parametrize("args", [
    ("generate", "--model", "m", "--prompt", "x", "--seed", "-1"),
    ("generate", "--model", "m", "--prompt", "x", "--seed", str(2**64)),
    ("generate", "--model", "m", "--prompt", "x", "--temperature", "nan"),
    ("generate", "--model", "m", "--prompt", "x", "--top-p", "2"),
    ("generate", "--model", "m", "--prompt", "x", "--top-p", "nan"),
    ("models", "create", "--family", "llama", "--output", "new", "--seed", "-1"),
    ("models", "create", "--family", "llama", "--output", "new", "--seed", str(2**64)),
    ("models", "create", "--family", "llama", "--output", "new", "--vocab-size", "0"),
    ("experts", "train", "--output", "new", "--seed", "-1"),
    ("experts", "train", "--output", "new", "--env-option", "max_steps=abc"),
    ("data", "generate", "math", "--output", "new", "--seed", "-1"),
    ("train", "sft", "--model", "m", "--data", "d", "--seed", "-1"),
    ("train", "sft", "--model", "m", "--data", "d", "--seed", str(2**64)),
])
def test_bad_seeds_and_ranges_are_one_line_errors_before_any_work(args, lazarus_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = lazarus_cli(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "Traceback" not in result.output
    assert not os.listdir(tmp_path)  # refused before anything was written
