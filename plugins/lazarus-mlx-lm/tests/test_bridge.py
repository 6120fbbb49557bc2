"""The mlx-lm bridge: a checkpoint of a type no first-party family knows (olmo2) loads, generates,
trains and runs the logit lens through mlx-lm's model class; first-party families still win."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import lazarus

IDS = mx.array([[(i * 37 + 11) % 500 + 6 for i in range(16)]], dtype=mx.int32)


@pytest.fixture(scope="module")
def tiny_olmo2(tmp_path_factory) -> Path:
    """A random 2-layer OLMo-2 checkpoint in Hugging Face layout with a trained tiny tokenizer."""
    from mlx.utils import tree_flatten
    from mlx_lm.models import olmo2

    from lazarus.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("olmo2") / "model"
    out.mkdir()
    tokenizer = train_tokenizer(out, vocab_size=512)
    config = {"architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "vocab_size": 512,
              "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 4, "rms_norm_eps": 1e-6, "rope_theta": 500000.0,
              "max_position_embeddings": 4096, "attention_bias": False, "tie_word_embeddings": False,
              "bos_token_id": tokenizer.bos_token_id, "eos_token_id": sorted(tokenizer.eos_token_ids)[0],
              "pad_token_id": tokenizer.pad_token_id}
    model = olmo2.Model(olmo2.ModelArgs.from_dict(config))
    rng = np.random.default_rng(0)
    weights = {k: mx.array(rng.normal(1.0 if k.endswith("norm.weight") else 0.0,
                                      0.1 if v.ndim == 1 else (2.0 / 8 if "embed" in k or "lm_head" in k
                                                               else v.shape[-1] ** -0.5), v.shape)
                           .astype(np.float32))
               for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def mlx_lm_model(path: Path):
    from mlx_lm.utils import load_model

    return load_model(Path(path))[0]


def test_plugin_is_listed_and_claims_only_what_others_do_not(lazarus_cli, tiny_checkpoint):
    listed = {p["name"]: p for p in lazarus_cli("plugins", "list", "--json").json()}
    bridge = listed["mlx-lm"]
    assert bridge["status"] == "loaded" and bridge["distribution"] == "lazarus-mlx-lm"
    assert bridge["provides"] == {"families": ["mlx-lm"]}
    model, _, _ = lazarus.load_model(tiny_checkpoint("qwen3"))
    assert model.family == "qwen3"  # mlx-lm knows qwen3 too; the first-party family wins


def test_olmo2_loads_with_mlx_lm_logits_and_generates(tiny_olmo2, lazarus_cli):
    from mlx_lm.generate import generate_step

    from lazarus.generation import generate_tokens

    model, tokenizer, config = lazarus.load_model(tiny_olmo2)
    assert model.family == "mlx-lm" and model.source.family == "mlx-lm" and len(model.blocks) == 2
    reference = mlx_lm_model(tiny_olmo2)
    assert mx.abs(model(IDS) - reference(IDS)).max().item() < 1e-5
    prompt = tokenizer.encode("The cat sat on the mat")
    ours = [t.item() for t in generate_tokens(model, mx.array([prompt]), max_tokens=12)]
    assert ours == [int(t) for t, _ in generate_step(mx.array(prompt), reference, max_tokens=12)]
    result = lazarus_cli("generate", "--model", tiny_olmo2, "--prompt", "Hello", "--max-tokens", "5")
    assert result.exit_code == 0, result.output
    info = lazarus_cli("models", "info", tiny_olmo2, "--json").json()
    assert info["family"] == "mlx-lm" and info["layers"] == 2 and info["parameters"] == model.num_parameters


def test_hook_points_and_logit_lens(tiny_olmo2, lazarus_cli, tmp_path):
    model, _, _ = lazarus.load_model(tiny_olmo2)
    logits, acts = model.run_with_cache(IDS)
    assert sorted(acts) == sorted(model.hook_names())
    assert mx.array_equal(acts["blocks.0.hook_resid_post"], acts["blocks.1.hook_resid_pre"])
    assert mx.allclose(model.unembed(acts["ln_final.hook_normalized"]), logits, atol=1e-5)
    # a hook changes what follows: zeroing the last block's output flattens the logits
    flat = model.run_with_hooks(IDS, fwd_hooks=[("blocks.1.hook_resid_post", lambda x, name: 0 * x)])
    assert mx.abs(flat - logits).max().item() > 1e-2

    result = lazarus_cli("introspect", "logit-lens", "--model", tiny_olmo2, "--prompt", "The cat sat",
                         "--json", tmp_path / "lens.json")
    assert result.exit_code == 0, result.output
    lens = json.loads((tmp_path / "lens.json").read_text())
    assert len(lens["positions"][0]["layers"]) == 2


@pytest.mark.slow
def test_lora_training_on_a_bridged_model_loads_in_mlx_lm(tiny_olmo2, tmp_path):
    from mlx_lm.tuner.utils import load_adapters

    from lazarus.data.math import generate, write_math_data

    write_math_data(generate(120, seed=0), tmp_path / "math", valid_fraction=0.1, test_fraction=0.0)
    out = tmp_path / "run"
    result = lazarus_train(tiny_olmo2, tmp_path / "math" / "sft", out)
    assert result.exit_code == 0, result.output
    ours, _, _ = lazarus.load_model(tiny_olmo2, adapter_path=out)
    reference = load_adapters(mlx_lm_model(tiny_olmo2), str(out))
    base, _, _ = lazarus.load_model(tiny_olmo2)
    assert mx.abs(ours(IDS) - base(IDS)).max().item() > 1e-3
    assert mx.abs(ours(IDS) - reference(IDS)).max().item() < 1e-4


def lazarus_train(model, data, out):
    from click.testing import CliRunner

    from lazarus.cli import main

    return CliRunner().invoke(main, ["train", "sft", "--model", str(model), "--data", str(data), "--output",
                                     str(out), "--max-steps", "6", "--batch-size", "4", "--rank", "4",
                                     "--learning-rate", "3e-3"], catch_exceptions=False)


def test_type_mlx_lm_does_not_know_is_one_line_error(tiny_olmo2, tmp_path):
    import shutil

    path = tmp_path / "unknown"
    shutil.copytree(tiny_olmo2, path)
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "no_such_arch"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(lazarus.errors.LazarusError, match="unsupported model_type 'no_such_arch'.*mlx-lm"):
        lazarus.load_model(path)


#: tiny configs of architectures whose final norm sits elsewhere than ``model.norm``
ARCHITECTURES = {
    # beside the layers, under another name
    "gpt_neox": {"max_position_embeddings": 256, "hidden_size": 64, "num_attention_heads": 4,
                 "num_hidden_layers": 2, "layer_norm_eps": 1e-5, "rotary_emb_base": 10000, "rotary_pct": 0.25,
                 "use_parallel_residual": True, "intermediate_size": 128},
    "phi": {"max_position_embeddings": 256, "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
            "num_key_value_heads": 4, "partial_rotary_factor": 0.5, "intermediate_size": 128},
    # a weightless functional norm
    "nanochat": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                 "max_position_embeddings": 256, "intermediate_size": 128},
    # the head normalises
    "phixtral": {"num_vocab": 512, "model_dim": 64, "num_heads": 4, "num_layers": 2, "rotary_dim": 8,
                 "num_experts_per_tok": 2, "num_local_experts": 2},
}


def tiny_mlx_lm_checkpoint(root: Path, model_type: str) -> Path:
    """A random 2-layer checkpoint of an mlx-lm architecture in Hugging Face layout."""
    import importlib

    from mlx.utils import tree_flatten

    from lazarus.tokenizer import train_tokenizer

    out = root / model_type
    out.mkdir()
    tokenizer = train_tokenizer(out, vocab_size=512)
    config = {"model_type": model_type, "vocab_size": 512, "tie_word_embeddings": False,
              "bos_token_id": tokenizer.bos_token_id, "eos_token_id": sorted(tokenizer.eos_token_ids)[0],
              **ARCHITECTURES[model_type]}
    module = importlib.import_module(f"mlx_lm.models.{model_type}")
    model = module.Model(module.ModelArgs.from_dict(config))
    rng = np.random.default_rng(0)
    weights = {k: mx.array(rng.normal(1.0 if "norm" in k or k.endswith("ln.weight") else 0.0,
                                      0.1 if v.ndim == 1 else v.shape[-1] ** -0.5, v.shape).astype(np.float32))
               for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_every_architecture_has_a_final_norm_for_the_lens(model_type, tmp_path, lazarus_cli):
    """The lens reads the residual stream through ln_final and the head: at the last block that must be
    the model's own logits, whatever the architecture calls (or how it applies) its final norm."""
    path = tiny_mlx_lm_checkpoint(tmp_path, model_type)
    model, _, _ = lazarus.load_model(path)
    assert model.family == "mlx-lm"
    logits, acts = model.run_with_cache(IDS)
    last = acts[f"blocks.{len(model.blocks) - 1}.hook_resid_post"]
    assert mx.allclose(model.unembed(model.ln_final(last)), logits, atol=1e-4)
    # the hook fires on the final norm's output (phixtral's norm is inside its head: not comparable)
    if "ln_final.hook_normalized" in model.hook_names() and model_type != "phixtral":
        assert mx.allclose(model.unembed(acts["ln_final.hook_normalized"]), logits, atol=1e-4)
    if model_type == "gpt_neox":  # the reproduction of the issue, through the CLI
        before = {f.name: f.read_bytes() for f in path.iterdir()}
        result = lazarus_cli("introspect", "logit-lens", "--model", path, "--prompt", "The cat sat",
                             "--json", tmp_path / "lens.json")
        assert result.exit_code == 0, result.output
        assert {f.name: f.read_bytes() for f in path.iterdir()} == before
        assert len(json.loads((tmp_path / "lens.json").read_text())["positions"][0]["layers"]) == 2


def test_plugins_show_names_the_hook_points_a_bridged_model_lacks(lazarus_cli):
    shown = lazarus_cli("plugins", "show", "mlx-lm").output
    assert "not fired: hook_attn_out, hook_mlp_out" in " ".join(shown.split())
