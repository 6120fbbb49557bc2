"""Adapters (lora, dora, full) on Lazarus-loaded tiny checkpoints, with mlx-lm as the reference.

mlx-lm is used here only as the reference: adapters Lazarus writes must load in mlx-lm with the
same logits, and adapters mlx-lm's own LoRA code writes must load in Lazarus with the same logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from mlx.utils import tree_flatten

import lazarus
from lazarus.adapters import (
    AdapterConfig,
    LoraParameters,
    adapter_weights,
    apply_adapter,
    fuse_adapter,
    load_adapter,
    save_adapter,
    trainable_parameters,
)
from lazarus.cli import main
from lazarus.errors import LazarusError

IDS = mx.array([[1, 7, 42, 99, 3, 250, 17, 8]], dtype=mx.int32)
ATOL = 2e-4


def _logits(model) -> np.ndarray:
    out = model(IDS)
    mx.eval(out)
    return np.array(out.astype(mx.float32))


def _load(base: Path, adapter: Path | None = None):
    model, _, _ = lazarus.load_model(base, adapter_path=adapter)
    return model


def _config(kind: str, num_layers: int = 2, keys=None, rank: int = 4) -> AdapterConfig:
    return AdapterConfig(fine_tune_type=kind, num_layers=num_layers,
                         lora_parameters=LoraParameters(rank=rank, scale=2.0, dropout=0.0, keys=keys))


def _make_adapter_matter(model, config: AdapterConfig, seed: int = 1) -> None:
    """Give every adapter tensor random values so the adapter changes the logits noticeably."""
    mx.random.seed(seed)
    new = {}
    for key, value in adapter_weights(model, config).items():
        noise = 0.05 * mx.random.normal(value.shape)
        # lora_b starts at zero and m at the base row norms: perturb around what they hold
        new[key] = (value + noise).astype(value.dtype)
    model.load_weights(list(new.items()), strict=False)
    mx.eval(model.parameters())


@pytest.fixture(scope="module")
def tiny_llama(tiny_checkpoint) -> Path:
    """The shared tiny random llama checkpoint (read only: tests that write copy it first)."""
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def base_logits(tiny_llama):
    return _logits(_load(tiny_llama))


# -- Lazarus -> mlx-lm --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lora", "dora", "full"])
def test_lazarus_adapter_loads_in_mlx_lm_with_same_logits(tiny_llama, base_logits, tmp_path, kind):
    import mlx_lm

    model = _load(tiny_llama)
    config = _config(kind, num_layers=1 if kind == "full" else 2)
    apply_adapter(model, config)
    _make_adapter_matter(model, config)
    ours = _logits(model)
    assert np.abs(ours - base_logits).max() > 1e-2, "the adapter must change the logits"
    save_adapter(model, tmp_path / "adapter", config)

    reference, _ = mlx_lm.load(str(tiny_llama), adapter_path=str(tmp_path / "adapter"))
    np.testing.assert_allclose(_logits(reference), ours, atol=ATOL, rtol=1e-4)

    # and Lazarus itself reads it back through load_model(adapter_path=...)
    again = _load(tiny_llama, tmp_path / "adapter")
    np.testing.assert_allclose(_logits(again), ours, atol=1e-6)


@pytest.mark.parametrize("family, kind", [("qwen2", "dora"), ("gemma2", "lora")])
def test_other_families_adapters_match_mlx_lm(tiny_checkpoint, tmp_path, family, kind):
    """Biased projections (qwen2) and sandwich norms with soft-capping (gemma2) go through
    ``model.blocks`` like llama does."""
    import mlx_lm

    base = tiny_checkpoint(family)
    model = _load(base)
    config = _config(kind)
    apply_adapter(model, config)
    _make_adapter_matter(model, config)
    ours = _logits(model)
    save_adapter(model, tmp_path / "adapter", config)
    reference, _ = mlx_lm.load(str(base), adapter_path=str(tmp_path / "adapter"))
    np.testing.assert_allclose(_logits(reference), ours, atol=ATOL, rtol=1e-4)
    fuse_adapter(model, config)
    np.testing.assert_allclose(_logits(model), ours, atol=ATOL, rtol=1e-4)


# -- mlx-lm -> Lazarus --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_mlx_lm_written_adapter_loads_in_lazarus_with_same_logits(tiny_llama, base_logits, tmp_path, kind):
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load_model as mlx_lm_load_model
    from mlx_lm.utils import save_config

    reference, _ = mlx_lm_load_model(tiny_llama)
    reference.freeze()
    lora_parameters = {"rank": 4, "scale": 3.0, "dropout": 0.0}
    if kind == "dora":  # LoRA keeps mlx-lm's default keys (every linear layer of the blocks)
        lora_parameters["keys"] = ["self_attn.q_proj", "mlp.down_proj"]
    linear_to_lora_layers(reference, 2, lora_parameters, use_dora=kind == "dora")
    mx.random.seed(3)
    perturbed = {k: v + 0.05 * mx.random.normal(v.shape) for k, v in tree_flatten(reference.trainable_parameters())}
    reference.load_weights(list(perturbed.items()), strict=False)
    # saved the way mlx_lm.lora does: the trainable parameters, and its whole args as the config
    adapter_dir = tmp_path / "mlx_lm_adapter"
    adapter_dir.mkdir()
    mx.save_safetensors(str(adapter_dir / "adapters.safetensors"), dict(tree_flatten(reference.trainable_parameters())))
    save_config({"model": str(tiny_llama), "fine_tune_type": kind, "num_layers": 2, "iters": 10,
                 "learning_rate": 1e-5, "lora_parameters": lora_parameters, "seed": 0},
                adapter_dir / "adapter_config.json")
    expected = _logits(reference)
    assert np.abs(expected - base_logits).max() > 1e-2

    model = _load(tiny_llama, adapter_dir)
    np.testing.assert_allclose(_logits(model), expected, atol=ATOL, rtol=1e-4)


# -- fuse ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_fused_model_equals_base_plus_adapter(tiny_llama, tmp_path, kind):
    model = _load(tiny_llama)
    config = _config(kind)
    apply_adapter(model, config)
    _make_adapter_matter(model, config)
    with_adapter = _logits(model)
    fuse_adapter(model, config)
    keys = [k for k, _ in tree_flatten(model.parameters())]
    assert not [k for k in keys if "lora" in k or ".linear." in k or k.endswith(".m")]
    np.testing.assert_allclose(_logits(model), with_adapter, atol=ATOL, rtol=1e-4)
    # fused, the whole model is trainable again like a freshly loaded one
    assert len(trainable_parameters(model)) == len(keys)


def test_fuse_cli_writes_hf_checkpoint_that_loads_in_lazarus_and_mlx_lm(tiny_llama, tmp_path):
    import mlx_lm

    model = _load(tiny_llama)
    config = _config("dora", keys=("self_attn.v_proj", "mlp.up_proj"))
    apply_adapter(model, config)
    _make_adapter_matter(model, config)
    expected = _logits(model)
    save_adapter(model, tmp_path / "adapter", config)

    out = tmp_path / "fused"
    result = CliRunner().invoke(main, ["adapters", "fuse", "--model", str(tiny_llama), "--adapter",
                                       str(tmp_path / "adapter"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    record = json.loads((out / "lazarus.json").read_text())
    assert record["source_model"]["weights_sha256"] and record["fused_fine_tune_type"] == "dora"

    np.testing.assert_allclose(_logits(_load(out)), expected, atol=ATOL, rtol=1e-4)
    reference, _ = mlx_lm.load(str(out))
    np.testing.assert_allclose(_logits(reference), expected, atol=ATOL, rtol=1e-4)


def test_fuse_cli_refuses_to_overwrite_the_base_model(tiny_llama, tmp_path):
    import shutil

    base = Path(shutil.copytree(tiny_llama, tmp_path / "base"))
    model = _load(base)
    config = _config("lora")
    apply_adapter(model, config)
    save_adapter(model, tmp_path / "adapter", config)
    before = (base / "model.safetensors").read_bytes()
    for output in (base, tmp_path):
        result = CliRunner().invoke(main, ["adapters", "fuse", "-m", str(base), "-a", str(tmp_path / "adapter"),
                                           "-o", str(output)])
        assert result.exit_code == 2
        assert "would replace the base model" in result.output
    assert (base / "model.safetensors").read_bytes() == before


# -- what apply_adapter does --------------------------------------------------------------------
def test_lora_trains_only_adapter_tensors_of_selected_blocks_and_keys(tiny_llama):
    model = _load(tiny_llama)
    n_blocks = len(model.blocks)
    hidden, rank = model.args.hidden_size, 4
    config = _config("lora", num_layers=1, keys=("self_attn.q_proj", "mlp.down_proj"), rank=rank)
    apply_adapter(model, config)
    trainable = trainable_parameters(model)
    last = f"model.layers.{n_blocks - 1}"
    assert sorted(trainable) == [f"{last}.mlp.down_proj.lora_a", f"{last}.mlp.down_proj.lora_b",
                                 f"{last}.self_attn.q_proj.lora_a", f"{last}.self_attn.q_proj.lora_b"]
    q_out = model.args.num_attention_heads * model.args.dim_per_head
    assert trainable[f"{last}.self_attn.q_proj.lora_a"].shape == (hidden, rank)
    assert trainable[f"{last}.self_attn.q_proj.lora_b"].shape == (rank, q_out)
    assert not np.any(np.array(trainable[f"{last}.self_attn.q_proj.lora_b"]))


def test_fresh_adapter_leaves_logits_unchanged_and_defaults_cover_every_linear(tiny_llama, base_logits):
    for kind in ("lora", "dora"):
        model = _load(tiny_llama)
        config = _config(kind, num_layers=-1)
        apply_adapter(model, config)
        np.testing.assert_allclose(_logits(model), base_logits, atol=1e-5)
        wrapped = {k.rsplit(".", 1)[0] for k in trainable_parameters(model)}
        expected = {f"model.layers.{i}.{p}" for i in range(len(model.blocks))
                    for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
        assert wrapped == expected


def test_gradients_reach_only_the_adapter(tiny_llama):
    import mlx.nn as nn

    model = _load(tiny_llama)
    config = _config("lora", num_layers=1)
    apply_adapter(model, config)

    def loss(m):
        logits = m(IDS[:, :-1])
        return nn.losses.cross_entropy(logits, IDS[:, 1:]).mean()

    _, grads = nn.value_and_grad(model, loss)(model)
    flat = dict(tree_flatten(grads))
    assert set(flat) == set(trainable_parameters(model))
    # lora_b starts at zero, so its gradient is what moves the adapter first
    assert any(float(mx.abs(v).max()) > 0 for k, v in flat.items() if k.endswith("lora_b"))


def test_bad_keys_and_layer_counts_are_one_line_errors(tiny_llama):
    model = _load(tiny_llama)
    with pytest.raises(LazarusError, match=r"'self_attn\.qq_proj' matches no layer.*self_attn\.q_proj"):
        apply_adapter(model, _config("lora", keys=("self_attn.qq_proj",)))
    with pytest.raises(LazarusError, match="input_layernorm.*not a linear layer"):
        apply_adapter(model, _config("lora", keys=("input_layernorm",)))
    with pytest.raises(LazarusError, match="num_layers=9 but the model has only 2 blocks"):
        apply_adapter(model, _config("lora", num_layers=9))
    with pytest.raises(LazarusError, match="no adapter named 'vera'"):
        apply_adapter(model, _config("vera"))
    apply_adapter(model, _config("lora"))
    with pytest.raises(LazarusError, match="already carries an adapter"):
        apply_adapter(model, _config("lora"))


# -- loading errors -----------------------------------------------------------------------------
def test_wrong_adapter_shapes_name_the_key_and_leave_the_model_usable(tiny_llama, base_logits, tmp_path):
    model = _load(tiny_llama)
    config = _config("lora", rank=4)
    apply_adapter(model, config)
    save_adapter(model, tmp_path / "adapter", config)
    weights = dict(mx.load(str(tmp_path / "adapter" / "adapters.safetensors")))
    key = "model.layers.1.self_attn.k_proj.lora_b"
    good_shape = tuple(weights[key].shape)
    weights[key] = mx.zeros((4, good_shape[1] + 3))
    mx.save_safetensors(str(tmp_path / "adapter" / "adapters.safetensors"), weights)

    fresh = _load(tiny_llama)
    with pytest.raises(LazarusError) as info:
        load_adapter(fresh, tmp_path / "adapter")
    message = str(info.value)
    assert "\n" not in message
    assert key in message and str((4, good_shape[1] + 3)) in message and str(good_shape) in message
    # the failed load was undone: no adapter layers, same logits as the base model
    assert not any("lora" in k for k, _ in tree_flatten(fresh.parameters()))
    np.testing.assert_allclose(_logits(fresh), base_logits, atol=1e-6)

    out = tmp_path / "fused"
    result = CliRunner().invoke(main, ["adapters", "fuse", "--model", str(tiny_llama), "--adapter",
                                       str(tmp_path / "adapter"), "--output", str(out)])
    assert result.exit_code == 2
    assert key in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_adapter_for_another_rank_in_config_is_refused(tiny_llama, tmp_path):
    model = _load(tiny_llama)
    config = _config("lora", rank=4)
    apply_adapter(model, config)
    save_adapter(model, tmp_path / "adapter", config)
    data = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    data["lora_parameters"]["rank"] = 8
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(data))
    with pytest.raises(LazarusError, match=r"shapes differ \(adapter vs model\): \S+lora_a \(128, 4\) vs \(128, 8\).*"
                       r"its adapter_config.json does not match its weights"):
        load_adapter(_load(tiny_llama), tmp_path / "adapter")


def test_missing_adapter_directory_and_bad_config(tiny_llama, tmp_path):
    with pytest.raises(LazarusError, match="adapter path not found"):
        load_adapter(_load(tiny_llama), tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapters.safetensors").write_bytes(b"")
    (bad / "adapter_config.json").write_text('{"fine_tune_type": "lora", "lora_parameters": {"rank": 0}}')
    with pytest.raises(LazarusError, match=r"adapter_config.json: invalid adapter configuration: rank must be > 0"):
        load_adapter(_load(tiny_llama), bad)


# -- adapters info ------------------------------------------------------------------------------
def test_adapters_info_json_and_table(tiny_llama, tmp_path):
    model = _load(tiny_llama)
    config = _config("dora", num_layers=1, keys=("self_attn.q_proj",), rank=2)
    apply_adapter(model, config)
    save_adapter(model, tmp_path / "adapter", config, provenance={"trainer": "sft"})
    result = CliRunner().invoke(main, ["adapters", "info", str(tmp_path / "adapter"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    hidden = model.args.hidden_size
    q_out = model.args.num_attention_heads * model.args.dim_per_head
    assert info["type"] == "dora" and info["rank"] == 2 and info["scale"] == 2.0
    assert info["layers"] == [len(model.blocks) - 1] and info["keys"] == ["self_attn.q_proj"]
    assert info["parameters"] == hidden * 2 + 2 * q_out + q_out
    assert info["provenance"]["trainer"] == "sft"
    assert info["provenance"]["source_model"]["model"] == str(tiny_llama)

    table = CliRunner().invoke(main, ["adapters", "info", str(tmp_path / "adapter")])
    assert table.exit_code == 0 and "dora" in table.output and "self_attn.q_proj" in table.output


def test_dropout_acts_only_in_training_mode(tiny_llama):
    model = _load(tiny_llama)
    config = AdapterConfig(fine_tune_type="lora", num_layers=1,
                           lora_parameters=LoraParameters(rank=4, scale=2.0, dropout=0.5))
    apply_adapter(model, config)
    _make_adapter_matter(model, config)
    assert not model.training  # load_model returns an eval-mode model and the adapter follows it
    np.testing.assert_array_equal(_logits(model), _logits(model))
    model.train()
    assert np.abs(_logits(model) - _logits(model)).max() > 1e-4


# -- quantized base layers ----------------------------------------------------------------------
def test_lora_on_quantized_layers_and_fuse(tiny_llama):
    import mlx.nn as nn

    model = _load(tiny_llama)
    nn.quantize(model, group_size=32, bits=8)
    quantized_logits = _logits(model)
    config = _config("lora", num_layers=1)
    apply_adapter(model, config)
    np.testing.assert_allclose(_logits(model), quantized_logits, atol=1e-5)
    _make_adapter_matter(model, config)
    with_adapter = _logits(model)
    fuse_adapter(model, config, dequantize=True)
    np.testing.assert_allclose(_logits(model), with_adapter, atol=ATOL, rtol=1e-4)
    with pytest.raises(LazarusError, match="full fine-tuning needs unquantized weights"):
        nn.quantize(model, group_size=32, bits=8)
        apply_adapter(model, _config("full", num_layers=1))


# -- an adapter trained on another model ---------------------------------------------------------
@pytest.mark.parametrize("num_layers, overrides, says", [
    (None, {"num_hidden_layers": 3}, "it adapts 3 blocks, this model has 2"),
    (-1, {"num_hidden_layers": 3}, "has no place in this model"),
    (None, {"hidden_size": 32, "intermediate_size": 64}, "shapes differ (adapter vs model): model.layers.0.mlp.down_proj"),
])
def test_an_adapter_of_another_model_says_it_does_not_fit_and_where_it_came_from(
        tiny_checkpoint, tiny_dataset, tiny_llama, tmp_path, num_layers, overrides, says):
    other = tiny_checkpoint("llama", **overrides)
    args = ["train", "sft", "--model", str(other), "--data", str(tiny_dataset()), "--output", str(tmp_path / "a"),
            "--max-steps", "1", "--save-interval", "0", "--eval-batches", "1", "--rank", "2"]
    if num_layers is not None:
        args += ["--num-layers", str(num_layers)]
    assert CliRunner().invoke(main, args, catch_exceptions=False).exit_code == 0
    result = CliRunner().invoke(main, ["adapters", "fuse", "--model", str(tiny_llama), "--adapter",
                                       str(tmp_path / "a"), "--output", str(tmp_path / "fused")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1
    assert "this adapter does not fit this model" in line and says in line
    assert f"it was trained on {other} (llama)" in line
    assert "num_layers=" not in line  # not a flag problem
    assert not (tmp_path / "fused").exists()
