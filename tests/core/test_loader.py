"""load_model: layouts it reads (sharded, hub cache, dtypes) and one-line errors for bad checkpoints."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import mlx.core as mx
import pytest
from click.testing import CliRunner

import lazarus
from lazarus import provenance
from lazarus.cli import main
from lazarus.errors import LazarusError

IDS = mx.array([[6, 60, 70, 80, 90, 100, 110, 120]], dtype=mx.int32)


@pytest.fixture
def llama_copy(tiny_checkpoint, tmp_path):
    """A private copy of the tiny llama checkpoint that a test may break."""
    return shutil.copytree(tiny_checkpoint("llama"), tmp_path / "llama")


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (path / "config.json").write_text(json.dumps(config))


def rewrite_weights(path, change):
    weights = mx.load(str(path / "model.safetensors"))
    change(weights)
    mx.save_safetensors(str(path / "model.safetensors"), weights)


def assert_one_line(exc: pytest.ExceptionInfo, *parts: str):
    message = str(exc.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


# -- what loads ---------------------------------------------------------------------------------
def test_returns_model_tokenizer_config_and_provenance(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    model, tokenizer, config = lazarus.load_model(path)
    assert config == json.loads((path / "config.json").read_text())
    assert tokenizer.encode("hello")[0] == tokenizer.bos_token_id
    assert model.source.family == "llama" and model.source.path == str(path)
    record = provenance.for_model(model, data_files=[path / "config.json"])
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert record["source_model"]["weights_sha256"] == {"model.safetensors": digest}
    assert record["lazarus_version"] == lazarus.__version__ and record["mlx_version"]
    assert record["plugins"]["lazarus-families"]
    assert record["data_sha256"]["config.json"] == provenance.sha256_file(path / "config.json")


def test_sharded_checkpoint_with_index(llama_copy):
    reference, _, _ = lazarus.load_model(llama_copy)
    weights = mx.load(str(llama_copy / "model.safetensors"))
    keys = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, names in shards.items():
        mx.save_safetensors(str(llama_copy / name), {k: weights[k] for k in names})
    (llama_copy / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: name for name, names in shards.items() for k in names}}
    (llama_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    sharded, _, _ = lazarus.load_model(llama_copy)
    assert mx.array_equal(sharded(IDS), reference(IDS))
    assert len(sharded.source.weight_files) == 2


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype_conversion(tiny_checkpoint, dtype):
    full, _, _ = lazarus.load_model(tiny_checkpoint("llama"))
    half, _, _ = lazarus.load_model(tiny_checkpoint("llama"), dtype=dtype)
    assert half.model.layers[0].self_attn.q_proj.weight.dtype == getattr(mx, dtype)
    logits = half(IDS)
    assert logits.dtype == getattr(mx, dtype)
    assert mx.abs(logits.astype(mx.float32) - full(IDS)).max().item() < 0.15


def test_stored_bfloat16_is_kept_unless_asked(tiny_checkpoint):
    model, _, _ = lazarus.load_model(tiny_checkpoint("gemma", dtype="bfloat16"))
    assert model.model.embed_tokens.weight.dtype == mx.bfloat16
    model32, _, _ = lazarus.load_model(tiny_checkpoint("gemma", dtype="bfloat16"), dtype="float32")
    assert model32.model.embed_tokens.weight.dtype == mx.float32


def test_family_from_architectures_when_model_type_is_missing(llama_copy):
    edit_config(llama_copy, model_type=None)
    model, _, _ = lazarus.load_model(llama_copy)
    assert model.family == "llama"


def test_hub_id_from_the_local_cache_offline(tiny_checkpoint, tmp_path, monkeypatch):
    """A hub id resolves through huggingface_hub's cache layout with HF_HUB_OFFLINE=1 (no network)."""
    cache = tmp_path / "hub"
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--tiny-org--tiny-llama"
    shutil.copytree(tiny_checkpoint("llama"), repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    model, _, _ = lazarus.load_model("tiny-org/tiny-llama")
    assert model.family == "llama"
    with pytest.raises(LazarusError) as exc:
        lazarus.load_model("tiny-org/not-cached")
    assert_one_line(exc, "tiny-org/not-cached", "HF_HUB_OFFLINE")


# -- errors -------------------------------------------------------------------------------------
def test_unknown_model_type(llama_copy):
    edit_config(llama_copy, model_type="mamba9", architectures=["Mamba9ForCausalLM"])
    with pytest.raises(LazarusError) as exc:
        lazarus.load_model(llama_copy)
    assert_one_line(exc, "config.json", "unsupported model_type 'mamba9'", "installed families: gemma",
                    "llama (llama)", "pip install lazarus-families", "docs/plugins.md")


def test_missing_config(llama_copy):
    (llama_copy / "config.json").unlink()
    with pytest.raises(LazarusError) as exc:
        lazarus.load_model(llama_copy)
    assert_one_line(exc, str(llama_copy / "config.json"), "missing")


def test_config_missing_a_required_key(llama_copy):
    edit_config(llama_copy, hidden_size=None)
    with pytest.raises(LazarusError) as exc:
        lazarus.load_model(llama_copy)
    assert_one_line(exc, "config.json", "'hidden_size'")


def test_missing_weight_tensor(llama_copy):
    rewrite_weights(llama_copy, lambda w: w.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(LazarusError) as exc:
        lazarus.load_model(llama_copy)
    assert_one_line(exc, "model.safetensors", "missing weight tensor 'model.layers.1.mlp.up_proj.weight'")


def test_unexpected_tensor(llama_copy):
    rewrite_weights(llama_copy, lambda w: w.update({"model.layers.0.mlp.extra.weight": mx.zeros((2, 2))}))
    with pytest.raises(LazarusError) as exc:
        lazarus.load_model(llama_copy)
    assert_one_line(exc, "model.safetensors", "unexpected tensor 'model.layers.0.mlp.extra.weight'")


def test_shape_mismatch(llama_copy):
    rewrite_weights(llama_copy, lambda w: w.update({"model.norm.weight": mx.ones((65,))}))
    with pytest.raises(LazarusError) as exc:
        lazarus.load_model(llama_copy)
    assert_one_line(exc, "model.safetensors", "'model.norm.weight'", "(65,)", "(64,)")


def test_truncated_safetensors(llama_copy):
    weights = llama_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(LazarusError) as exc:
        lazarus.load_model(llama_copy)
    assert_one_line(exc, str(weights), "truncated safetensors")


def test_garbage_safetensors(llama_copy):
    (llama_copy / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(LazarusError) as exc:
        lazarus.load_model(llama_copy)
    assert_one_line(exc, "model.safetensors", "corrupt safetensors")


def test_no_weights_and_bad_paths(llama_copy, tmp_path):
    (llama_copy / "model.safetensors").rename(llama_copy / "pytorch_model.bin")
    with pytest.raises(LazarusError) as exc:
        lazarus.load_model(llama_copy)
    assert_one_line(exc, "no *.safetensors weights", "pytorch_model.bin")
    with pytest.raises(LazarusError) as exc:
        lazarus.load_model(tmp_path / "nowhere")
    assert_one_line(exc, "no such model directory")


def test_bad_dtype_and_missing_adapter(tiny_checkpoint, tmp_path):
    with pytest.raises(LazarusError) as exc:
        lazarus.load_model(tiny_checkpoint("llama"), dtype="int8")
    assert_one_line(exc, "'int8'", "float32, bfloat16, float16")
    with pytest.raises(LazarusError) as exc:
        lazarus.load_model(tiny_checkpoint("llama"), adapter_path=tmp_path / "no-adapter")
    assert "no-adapter" in str(exc.value)


def test_cli_turns_loader_errors_into_exit_code_2(llama_copy):
    rewrite_weights(llama_copy, lambda w: w.update({"model.norm.weight": mx.ones((65,))}))
    result = CliRunner().invoke(main, ["generate", "--model", str(llama_copy), "--prompt", "hi", "--max-tokens", "2"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "'model.norm.weight'" in result.output

    (llama_copy / "config.json").unlink()
    proc = subprocess.run([sys.executable, "-m", "lazarus.cli", "models", "info", str(llama_copy)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "config.json: missing" in proc.stderr


def test_other_tools_quantizations_are_refused_by_name(llama_copy):
    # mlx-lm's own layout loads (tests/core/test_quantized.py); AWQ/GPTQ/bitsandbytes do not
    edit_config(llama_copy, quantization_config={"quant_method": "awq", "bits": 4, "group_size": 128})
    with pytest.raises(LazarusError) as exc:
        lazarus.load_model(llama_copy)
    assert_one_line(exc, "config.json", "quant_method 'awq'")


def test_untied_config_without_head_says_how_to_fix(llama_copy):
    rewrite_weights(llama_copy, lambda w: w.pop("lm_head.weight"))
    with pytest.raises(LazarusError) as exc:
        lazarus.load_model(llama_copy)
    assert_one_line(exc, "'lm_head.weight'", "tie_word_embeddings")
    edit_config(llama_copy, tie_word_embeddings=True)
    model, _, _ = lazarus.load_model(llama_copy)
    assert "lm_head" not in model
