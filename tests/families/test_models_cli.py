"""`lazarus models create` and `lazarus models info` through the real CLI."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest
from click.testing import CliRunner

import lazarus
from lazarus.cli import main
from tests.conftest import FAMILIES

HF_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "lazarus.json"}


def run(*args):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("family", FAMILIES)
def test_create_writes_a_loadable_hf_checkpoint_and_info_describes_it(tmp_path, family):
    out = tmp_path / family
    result = run("models", "create", "--family", family, "--output", str(out), "--seed", "3")
    assert result.exit_code == 0, result.output
    assert HF_FILES <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    model, tokenizer, config = lazarus.load_model(out)
    assert config["model_type"] == {"gemma3": "gemma3_text"}.get(family, family) and config["eos_token_id"] in tokenizer.eos_token_ids
    assert json.loads((out / "lazarus.json").read_text())["created_by"] == "lazarus models create"

    info = run("models", "info", str(out), "--json")
    assert info.exit_code == 0, info.output
    described = json.loads(info.output)
    assert described["family"] == family
    assert described["parameters"] == model.num_parameters
    assert described["layers"] == 2 and described["hidden_size"] == 64
    assert described["kv_heads"] == config["num_key_value_heads"] < described["attention_heads"]
    assert described["tied_embeddings"] == ("lm_head" not in model)
    table = run("models", "info", str(out))
    assert table.exit_code == 0 and family in table.output and "parameters" in table.output


def test_seed_and_dtype(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert run("models", "create", "-f", "qwen2", "-o", str(tmp_path / name), "--seed", str(seed),
                   "--dtype", "bfloat16").exit_code == 0
    a, b, c = (mx.load(str(tmp_path / n / "model.safetensors")) for n in "abc")
    key = "model.layers.0.self_attn.q_proj.bias"
    assert a[key].dtype == mx.bfloat16
    assert mx.array_equal(a[key], b[key]) and not mx.array_equal(a[key], c[key])
    assert json.loads(run("models", "info", str(tmp_path / "a"), "--json").output)["dtype"] == "bfloat16"


def test_small_llama_is_about_75m_parameters(tmp_path):
    from lazarus.models.create import family_config
    from lazarus_families.llama import Model, ModelArgs

    model = Model(ModelArgs.from_hf_config(family_config("llama", "small")))
    assert 70e6 < model.num_parameters < 80e6


def test_refuses_to_overwrite_unless_forced(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run("models", "create", "-f", "llama", "-o", str(out))
    assert result.exit_code == 2 and "--force" in result.output and "Traceback" not in result.output
    assert (out / "notes.txt").read_text() == "mine"
    assert run("models", "create", "-f", "llama", "-o", str(out), "--force").exit_code == 0
    assert not (out / "notes.txt").exists() and (out / "config.json").exists()


def test_user_errors_exit_2(tmp_path):
    unknown = run("models", "create", "-f", "mamba9", "-o", str(tmp_path / "x"))
    assert unknown.exit_code == 2 and "no family named 'mamba9'" in unknown.output and "llama" in unknown.output
    no_small = run("models", "create", "-f", "gemma", "-o", str(tmp_path / "y"), "--size", "small")
    assert no_small.exit_code == 2 and "no 'small' size" in no_small.output
    assert not (tmp_path / "y").exists()
    missing = run("models", "info", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2 and "no such model directory" in missing.output
