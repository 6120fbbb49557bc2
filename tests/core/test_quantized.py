"""Quantized checkpoints in mlx-lm's layout: loading mlx-lm's own, writing them with `lazarus
quantize`, and both tools giving the same logits and tokens on the same quantized weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest

import lazarus
from lazarus.generation import generate_tokens

IDS = mx.array([[(i * 37 + 11) % 500 + 6 for i in range(20)]], dtype=mx.int32)


def mlx_lm_model(path: Path):
    from mlx_lm.utils import load_model

    return load_model(Path(path))[0]


@pytest.fixture(scope="module")
def mlx_lm_quantized(tiny_checkpoint, tmp_path_factory):
    """``make(family, **overrides) -> Path``: the tiny checkpoint quantized by mlx-lm's converter with
    its mixed 3/6-bit recipe (per-layer overrides in config.json), groups of 32."""
    from mlx_lm import convert

    made = {}

    def make(family: str, **overrides) -> Path:
        key = (family, json.dumps(overrides, sort_keys=True))
        if key not in made:
            out = tmp_path_factory.mktemp(f"mlx-lm-q-{family}") / "model"
            convert(hf_path=str(tiny_checkpoint(family, **overrides)), mlx_path=str(out), quantize=True,
                    q_bits=4, q_group_size=32, quant_predicate="mixed_3_6")
            made[key] = out
        return made[key]

    return make


# phi3's window is switched off: mlx-lm ignores it (tests/families/test_parity.py), quantized or not
@pytest.mark.parametrize("family,overrides", [("llama", {}), ("gemma3", {}), ("phi3", {"sliding_window": None})])
def test_mlx_lm_quantized_checkpoint_gives_mlx_lm_logits(mlx_lm_quantized, family, overrides):
    path = mlx_lm_quantized(family, **overrides)
    quant = json.loads((path / "config.json").read_text())["quantization"]
    assert {v["bits"] for v in quant.values() if isinstance(v, dict)} == {3, 6}  # per-layer overrides
    model, _, _ = lazarus.load_model(path)
    layers = [m for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert {m.bits for m in layers} == {3, 6} and all(m.group_size == 32 for m in layers)
    assert mx.abs(model(IDS) - mlx_lm_model(path)(IDS)).max().item() < 1e-5


def test_quantized_model_generates_and_exposes_hooks_like_mlx_lm(mlx_lm_quantized):
    from mlx_lm.generate import generate_step

    path = mlx_lm_quantized("llama")
    model, tokenizer, _ = lazarus.load_model(path)
    prompt = tokenizer.encode("The cat sat on the mat")
    ours = [t.item() for t in generate_tokens(model, mx.array([prompt]), max_tokens=12)]
    ref = [int(t) for t, _ in generate_step(mx.array(prompt), mlx_lm_model(path), max_tokens=12)]
    assert ours == ref
    logits, acts = model.run_with_cache(IDS, names=["blocks.1.hook_resid_post", "ln_final.hook_normalized"])
    assert acts["blocks.1.hook_resid_post"].shape == (1, 20, 64)
    assert mx.allclose(model.unembed(acts["ln_final.hook_normalized"]), logits, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_lazarus_quantize_writes_what_mlx_lm_loads(tiny_checkpoint, lazarus_cli, tmp_path, family):
    base = tiny_checkpoint(family, sliding_window=None) if family == "phi3" else tiny_checkpoint(family)
    out = tmp_path / "q4"
    result = lazarus_cli("quantize", "--model", base, "--bits", "4", "--group-size", "64", "--output", out)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    assert (out / "tokenizer.json").is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    if family == "phi3":  # written back in Phi-3's fused layout, as mlx-lm and transformers expect
        assert "model.layers.0.self_attn.qkv_proj.scales" in mx.load(str(out / "model.safetensors"))
    quantized, _, _ = lazarus.load_model(out)
    full, _, _ = lazarus.load_model(base)
    ours = quantized(IDS)
    assert mx.abs(ours - mlx_lm_model(out)(IDS)).max().item() < 1e-5
    # 4 bits change the logits, but not beyond recognition
    assert 1e-3 < mx.abs(ours - full(IDS)).max().item() < 0.5 * mx.abs(full(IDS)).max().item()
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    assert size < 0.4 * sum(p.stat().st_size for p in base.glob("*.safetensors"))


def test_quantize_refuses_to_overwrite_and_bad_settings(tiny_checkpoint, lazarus_cli, tmp_path):
    base = tiny_checkpoint("llama")
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = lazarus_cli("quantize", "--model", base, "--output", out)
    assert result.exit_code == 2 and "not empty" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert lazarus_cli("quantize", "--model", base, "--bits", "7", "--output", tmp_path / "x").exit_code == 2
    assert not (tmp_path / "x").exists()


def test_other_tools_quantization_is_a_one_line_error(tiny_checkpoint, tmp_path):
    path = tmp_path / "gptq"
    shutil.copytree(tiny_checkpoint("llama"), path)
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(lazarus.errors.LazarusError, match=r"config.json: quantization_config uses quant_method 'gptq'"):
        lazarus.load_model(path)
    config["quantization_config"] = None
    config["quantization"] = {"group_size": 48, "bits": 4}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(lazarus.errors.LazarusError, match="group_size must be one of 32, 64, 128"):
        lazarus.load_model(path)
