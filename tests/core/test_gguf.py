"""`lazarus export gguf`: the file read back with the `gguf` package holds the fused weights (q/k rows
in llama.cpp's order for the llama architecture), the hyper-parameters and the tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

import lazarus
from lazarus.checkpoints.gguf import gguf_name, permute_rows

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def llama_adapter(tiny_checkpoint, tmp_path_factory):
    """A LoRA adapter with non-zero B on the tiny llama, so fusing changes the weights."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from lazarus.adapters import AdapterConfig, LoraParameters, apply_adapter, save_adapter

    model, _, _ = lazarus.load_model(tiny_checkpoint("llama"))
    config = AdapterConfig(fine_tune_type="lora", num_layers=2, lora_parameters=LoraParameters(
        rank=4, scale=4.0, keys=("self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj")))
    apply_adapter(model, config)
    mx.random.seed(1)
    model.load_weights([(k, mx.random.normal(v.shape) * 0.3) for k, v in tree_flatten(model.trainable_parameters())
                        if k.endswith("lora_b")], strict=False)
    return save_adapter(model, tmp_path_factory.mktemp("adapter") / "adapter", config)


def read(path):
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    return tensors, fields


def test_llama_with_adapter_reads_back_as_the_fused_model(tiny_checkpoint, llama_adapter, lazarus_cli, tmp_path):
    from mlx.utils import tree_flatten

    from lazarus.adapters import fuse_adapter, load_adapter

    base = tiny_checkpoint("llama")
    out = tmp_path / "model.gguf"
    result = lazarus_cli("export", "gguf", "--model", base, "--adapter", llama_adapter, "--output", out)
    assert result.exit_code == 0, result.output
    tensors, fields = read(out)

    model, tokenizer, config = lazarus.load_model(base)
    fuse_adapter(model, load_adapter(model, llama_adapter))
    fused = dict(tree_flatten(model.parameters()))
    assert set(tensors) == {gguf_name(k) for k in fused} | {"rope_freqs.weight"}
    for key, value in fused.items():
        expected = np.array(value)
        if key.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config["num_attention_heads"] if "q_proj" in key else config["num_key_value_heads"]
            expected = np.array(permute_rows(value, heads))
        got = tensors[gguf_name(key)]
        assert got.shape == expected.shape, key
        np.testing.assert_allclose(got.astype(np.float32), expected, rtol=0, atol=1e-6, err_msg=key)
    base_model, _, _ = lazarus.load_model(base)
    assert not np.allclose(np.array(base_model.model.layers[0].self_attn.q_proj.weight),
                           np.array(fused["model.layers.0.self_attn.q_proj.weight"]))  # the adapter is in

    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == 2 and fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.embedding_length"] == 64 and fields["llama.rope.freq_base"] == 500000.0
    tokens = fields["tokenizer.ggml.tokens"]
    assert fields["tokenizer.ggml.model"] == "gpt2" and len(tokens) == config["vocab_size"]
    assert tokens[tokenizer.bos_token_id] == "<s>" and fields["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id
    assert len(fields["tokenizer.ggml.merges"]) > 100


def test_qwen2_keeps_biases_and_hf_row_order(tiny_checkpoint, lazarus_cli, tmp_path):
    out = tmp_path / "qwen2.gguf"
    assert lazarus_cli("export", "gguf", "--model", tiny_checkpoint("qwen2"), "--output", out).exit_code == 0
    tensors, fields = read(out)
    model, _, _ = lazarus.load_model(tiny_checkpoint("qwen2"))
    attn = model.model.layers[1].self_attn
    assert fields["general.architecture"] == "qwen2"
    np.testing.assert_array_equal(tensors["blk.1.attn_q.weight"], np.array(attn.q_proj.weight))
    np.testing.assert_array_equal(tensors["blk.1.attn_k.bias"], np.array(attn.k_proj.bias))


@pytest.mark.parametrize("family,why", [("gemma2", "the gemma2 family"), ("mistral", "sliding-window")])
def test_families_gguf_cannot_express_are_one_line_errors(tiny_checkpoint, lazarus_cli, tmp_path, family, why):
    out = tmp_path / "x.gguf"
    result = lazarus_cli("export", "gguf", "--model", tiny_checkpoint(family), "--output", out)
    assert result.exit_code == 2 and why in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_existing_output_is_not_overwritten(tiny_checkpoint, lazarus_cli, tmp_path):
    out = tmp_path / "taken.gguf"
    out.write_text("mine")
    result = lazarus_cli("export", "gguf", "--model", tiny_checkpoint("llama"), "--output", out)
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert out.read_text() == "mine"
