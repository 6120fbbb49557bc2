"""Fuzz tests of the readers people feed by hand: JSONL data, TOML/YAML config files, adapter configs.

Whatever the bytes, a reader gives a result or a :class:`LazarusError` (the CLI's one line, exit 2),
never another exception. Kept small (a few hundred examples in all, no deadline) so the suite stays
fast on two cores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazarus.adapters.config import AdapterConfig
from lazarus.data.records import read_dataset
from lazarus.errors import LazarusError
from lazarus.training.config import TrainingConfig, build_config, read_config_file

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: keys the readers look for, so generated objects often get past the first checks
KEYS = ["prompt", "completion", "text", "messages", "chosen", "rejected", "role", "content", "answer",
        "fine_tune_type", "num_layers", "lora_parameters", "rank", "scale", "dropout", "keys", "alpha",
        "learning_rate", "lora_targets", "max_steps", "adapter", "model", "seed", "lr_schedule", "dtype"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["lora", "dora", "full", "user", "assistant", "cosine"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=5)), max_leaves=12)
objects = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _line(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


jsonl_lines = st.one_of(objects.map(_line), json_values.map(_line), st.binary(max_size=40),
                        st.text(max_size=40).map(str.encode))


@FUZZ
@given(lines=st.lists(jsonl_lines, max_size=6), format=st.sampled_from([None, "sft", "preference", "prompt"]))
def test_jsonl_reader_gives_records_or_a_lazarus_error(scratch, lines, format):
    path = scratch / "data.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    try:
        dataset = read_dataset(path, format=format)
    except LazarusError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    else:
        assert len(dataset.records) <= len(lines)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


toml_values = st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=12), st.lists(st.text(max_size=6), max_size=3),
                        st.sampled_from(["lora", "dora", "cosine", "float16", "nowhere"]))
toml_documents = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), toml_values, max_size=5).map(
        lambda d: "".join(f"{k} = {_toml_value(v)}\n" for k, v in d.items())),
    st.text(max_size=80))


@FUZZ
@given(text=toml_documents)
def test_toml_config_gives_a_config_or_a_lazarus_error(scratch, text):
    path = scratch / "run.toml"
    if not _encodable(text):
        return
    path.write_text(text, encoding="utf-8")
    try:
        build_config(TrainingConfig, config_file=str(path))
    except LazarusError as exc:
        assert "\n" not in str(exc)


yaml_documents = st.one_of(objects.map(lambda d: json.dumps(d, allow_nan=True)),  # JSON is YAML
                           json_values.map(lambda v: json.dumps(v, allow_nan=True)),
                           st.text(max_size=80))


@FUZZ
@given(text=yaml_documents)
def test_yaml_config_gives_a_config_or_a_lazarus_error(scratch, text):
    pytest.importorskip("yaml")
    path = scratch / "run.yaml"
    if not _encodable(text):
        return
    path.write_text(text, encoding="utf-8")
    try:
        build_config(TrainingConfig, config_file=str(path))
    except LazarusError as exc:
        assert "\n" not in str(exc)


adapter_documents = st.one_of(
    st.fixed_dictionaries({}, optional={"fine_tune_type": json_values, "num_layers": json_values,
                                        "lora_parameters": st.one_of(objects, json_values)}).map(
        lambda d: json.dumps(d, allow_nan=True)),
    json_values.map(lambda v: json.dumps(v, allow_nan=True)),
    st.text(max_size=60))


@FUZZ
@given(text=adapter_documents)
def test_adapter_config_reader_gives_a_config_or_a_lazarus_error(scratch, text):
    path = scratch / "adapter_config.json"
    if not _encodable(text):
        return
    path.write_text(text, encoding="utf-8")
    try:
        config = AdapterConfig.from_file(path)
    except LazarusError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(config.num_layers, int) and config.rank > 0
        json.loads(config.to_json())  # and it writes back


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not something a file holds
        return False
    return True


def test_a_yaml_config_without_pyyaml_says_which_extra_to_install(tmp_path, monkeypatch, lazarus_cli):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 0.001\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if PyYAML were not installed
    with pytest.raises(LazarusError, match=r"pip install 'lazarus-core\[yaml\]'"):
        read_config_file(path, TrainingConfig)
    result = lazarus_cli("train", "sft", "--config", path, "--model", tmp_path, "--data", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"Error: {path}: reading YAML config files needs PyYAML: pip install "
                                     "'lazarus-core[yaml]' (or write the config as TOML)")


def test_the_yaml_extra_is_declared():
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).parents[2] / "lazarus-core" / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("pyyaml") for req in extras["yaml"])
    assert any(req.startswith("hypothesis") for req in extras["test"])
