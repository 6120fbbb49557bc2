"""Direct logit attribution sums to the logit on every family; attribution patching is grad x
difference and agrees with activation patching."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from lazarus.errors import LazarusError
from lazarus_introspect import activations
from lazarus_introspect.attribution import answer_metric, attribution_patching, compare_with_patching
from lazarus_introspect.dla import direct_logit_attribution
from tests.conftest import FAMILIES

PROMPT = "The cat sat on the mat"
CLEAN, CORRUPTED = "The cat sat on the mat", "The hat sat on the mat"


def _ids(tokenizer, text):
    return mx.array([tokenizer.encode(text)], dtype=mx.int32)


def _check_sums(model, result, logits_row, target, baseline):
    """The parts add up to the logit difference; only soft-capping is left unexplained."""
    parts = [c["contribution"] for c in result["components"] if c["kind"] != "head"]
    remainder = result["remainder"]
    assert math.isclose(result["total"], sum(parts), rel_tol=1e-9, abs_tol=1e-9)
    actual = float(logits_row[target] - logits_row[baseline])
    assert result["logit"] == pytest.approx(actual, abs=1e-5)
    linear = result["total"] + remainder["final_norm_bias"] + remainder["unembed_bias"]
    cap = getattr(getattr(model, "args", None), "final_softcap", None)
    if cap:  # the split is of the logit before soft-capping, which we can recover exactly
        pre = [cap * math.atanh(float(logits_row[i]) / cap) for i in (target, baseline)]
        assert linear == pytest.approx(pre[0] - pre[1], abs=1e-3)
    else:
        assert abs(remainder["nonlinear"]) < 1e-4 * max(1.0, abs(actual))


@pytest.mark.parametrize("family", FAMILIES)
def test_dla_contributions_sum_to_the_logit_difference(loaded, family):
    model, tokenizer = loaded(family)
    ids = _ids(tokenizer, PROMPT)
    logits = np.array(model(ids)[0, -1].astype(mx.float32))
    target, baseline = int(np.argmax(logits)), int(np.argsort(logits)[len(logits) // 2])
    result = direct_logit_attribution(model, ids, target, -1, baseline)
    _check_sums(model, result, logits, target, baseline)
    kinds = [c["kind"] for c in result["components"]]
    assert kinds.count("attn") == kinds.count("mlp") == len(model.blocks) and kinds.count("embed") == 1
    # heads split each attention layer: the rest is o_proj's bias (zero without one)
    attn = {c["layer"]: c["contribution"] for c in result["components"] if c["kind"] == "attn"}
    for layer, heads in enumerate(result["heads"]):
        assert sum(heads) + result["head_remainder"][layer] == pytest.approx(attn[layer], abs=1e-6)
        if getattr(model.blocks[layer].self_attn.o_proj, "bias", None) is None:
            assert abs(result["head_remainder"][layer]) < 1e-4


def test_dla_of_one_token_matches_numpy_by_hand(loaded):
    """Llama: logit[t] = W_U[t] . (w * x / rms(x)); each MLP's part is W_U[t] . (w * mlp / rms(x))."""
    model, tokenizer = loaded("llama")
    ids = _ids(tokenizer, PROMPT)
    target = 17
    result = direct_logit_attribution(model, ids, target)
    last = len(model.blocks) - 1
    _, cache = activations.run_with_cache(model, ids, [f"blocks.{last}.hook_resid_post",
                                                       f"blocks.{last}.hook_mlp_out"])
    x = np.array(cache[f"blocks.{last}.hook_resid_post"][0, -1])
    mlp = np.array(cache[f"blocks.{last}.hook_mlp_out"][0, -1])
    head = model.lm_head.weight if hasattr(model, "lm_head") else model.model.embed_tokens.weight
    w_u, w = np.array(head)[target], np.array(model.ln_final.weight)
    scale = 1 / np.sqrt((x ** 2).mean() + model.ln_final.eps)
    mlp_part = next(c for c in result["components"] if c["name"] == f"L{last} mlp")["contribution"]
    assert mlp_part == pytest.approx(float(w_u @ (w * mlp * scale)), rel=1e-4, abs=1e-5)
    assert result["logit"] == pytest.approx(float(w_u @ (w * x * scale)), rel=1e-4, abs=1e-5)


def test_dla_on_the_mlx_lm_bridge_splits_by_block(tiny_olmo2):
    import lazarus

    model, tokenizer, _ = lazarus.load_model(tiny_olmo2)
    assert model.family == "mlx-lm"
    ids = _ids(tokenizer, PROMPT)
    logits = np.array(model(ids)[0, -1].astype(mx.float32))
    target, baseline = int(np.argmax(logits)), int(np.argmin(logits))
    result = direct_logit_attribution(model, ids, target, -1, baseline)
    assert [c["kind"] for c in result["components"]] == ["embed"] + ["block"] * len(model.blocks)
    assert result["heads"] is None
    _check_sums(model, result, logits, target, baseline)
    # attribution patching there has the residual stream only (the bridge fires no branch hooks)
    corrupted = _ids(tokenizer, CORRUPTED)
    _, metric = answer_metric(ids.shape[1], [target], [baseline])
    scan = attribution_patching(model, ids, corrupted, metric, components=["resid_pre"])
    compared = compare_with_patching(model, ids, corrupted, [target], [baseline], scan, ["resid_pre"])
    assert compared["correlation"] is not None and len(scan["scores"]["resid_pre"]) == len(model.blocks)
    with pytest.raises(LazarusError, match="does not fire blocks.0.hook_attn_out"):
        attribution_patching(model, ids, corrupted, metric, components=["attn_out"])


@pytest.fixture(scope="module")
def tiny_olmo2(tmp_path_factory) -> Path:
    """A random 2-layer OLMo-2 checkpoint (a type only the mlx-lm bridge loads)."""
    pytest.importorskip("mlx_lm")
    from mlx.utils import tree_flatten
    from mlx_lm.models import olmo2

    from lazarus.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("olmo2") / "model"
    out.mkdir()
    tokenizer = train_tokenizer(out, vocab_size=512)
    config = {"architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "vocab_size": 512,
              "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 4, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
              "max_position_embeddings": 512, "attention_bias": False, "tie_word_embeddings": False,
              "bos_token_id": tokenizer.bos_token_id, "eos_token_id": sorted(tokenizer.eos_token_ids)[0],
              "pad_token_id": tokenizer.pad_token_id}
    model = olmo2.Model(olmo2.ModelArgs.from_dict(config))
    rng = np.random.default_rng(0)
    weights = {k: mx.array(rng.normal(1.0 if k.endswith("norm.weight") else 0.0,
                                      0.1 if v.ndim == 1 else v.shape[-1] ** -0.5, v.shape).astype(np.float32))
               for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


# -- attribution patching -------------------------------------------------------------------------
def _patching_case(loaded, family="llama"):
    model, tokenizer = loaded(family)
    clean, corrupted = _ids(tokenizer, CLEAN), _ids(tokenizer, CORRUPTED)
    assert clean.shape == corrupted.shape
    logits = np.array(model(clean)[0, -1])
    order = np.argsort(-logits)
    answer, wrong = int(order[0]), int(order[1])
    return model, clean, corrupted, answer, wrong


def test_attribution_patching_is_gradient_times_difference(loaded):
    model, clean, corrupted, answer, wrong = _patching_case(loaded)
    _, metric = answer_metric(clean.shape[1], [answer], [wrong])
    result = attribution_patching(model, clean, corrupted, metric)
    assert result["clean_metric"] == pytest.approx(float(metric(model(clean))), abs=1e-5)
    assert result["corrupt_metric"] == pytest.approx(float(metric(model(corrupted))), abs=1e-5)
    for component, layer in [("resid_pre", 1), ("attn_out", 0), ("mlp_out", 1)]:
        name = activations.hook_name(component, layer)
        _, clean_cache = activations.run_with_cache(model, clean, [name])
        _, corrupt_cache = activations.run_with_cache(model, corrupted, [name])
        base = corrupt_cache[name]

        def replaced(value, name=name):  # the metric as a function of the whole activation
            return metric(activations.run_with_hooks(model, corrupted, [(name, lambda a, n: value)]))

        grad = np.array(mx.grad(replaced)(base))
        diff = np.array(clean_cache[name]) - np.array(base)
        by_hand = (grad * diff).sum(axis=(0, 2))
        index = result["layers"].index(layer)
        np.testing.assert_allclose(result["estimates"][component][index], by_hand, rtol=1e-4, atol=1e-6)
        # and the gradient is the derivative: a central difference along the patch direction
        position = 1
        step = np.zeros_like(diff)
        step[:, position] = diff[:, position] * 1e-2
        plus = float(replaced(base + mx.array(step)))
        minus = float(replaced(base - mx.array(step)))
        assert (plus - minus) / 2e-2 == pytest.approx(by_hand[position], rel=2e-2, abs=1e-4)


def test_attribution_patching_correlates_with_activation_patching(loaded):
    """Measured on the seed-1 tiny llama: r = 0.901 over 3 components x 2 layers x 10 positions
    (resid_pre 0.907, attn_out 0.879, mlp_out 0.972)."""
    model, clean, corrupted, answer, wrong = _patching_case(loaded)
    _, metric = answer_metric(clean.shape[1], [answer], [wrong])
    components = ["resid_pre", "attn_out", "mlp_out"]
    result = attribution_patching(model, clean, corrupted, metric, components=components)
    compared = compare_with_patching(model, clean, corrupted, [answer], [wrong], result, components)
    assert compared["correlation"] >= 0.85
    assert compared["correlation_per_component"]["mlp_out"] >= 0.9


def test_several_token_answers_use_one_two_row_pass(loaded):
    model, clean, corrupted, answer, wrong = _patching_case(loaded)
    length = clean.shape[1]
    ids_for, metric = answer_metric(length, [answer, wrong], [wrong])
    assert ids_for(clean).shape == (2, length + 1)
    result = attribution_patching(model, ids_for(clean), ids_for(corrupted), metric, positions=length)
    assert all(len(row) == length for rows in result["estimates"].values() for row in rows)
    compared = compare_with_patching(model, clean, corrupted, [answer, wrong], [wrong], result,
                                     ["resid_pre", "attn_out", "mlp_out"])
    assert compared["correlation"] >= 0.8  # measured 0.846


def test_dla_and_attribute_commands_write_json_and_reports(cli, checkpoint, tmp_path):
    model = checkpoint("llama")
    dla = cli.json("introspect", "dla", "--model", model, "-p", PROMPT, "--baseline", "#5", "--report", tmp_path / "dla")
    assert dla["probe"] == "dla" and dla["baseline"]["id"] == 5 and abs(dla["remainder"]["nonlinear"]) < 1e-4
    assert {"dla_components.png", "dla_heads.png", "report.html"} <= {p.name for p in (tmp_path / "dla").iterdir()}
    attr = cli.json("introspect", "attribute", "--model", model, "--clean", CLEAN, "--corrupted", CORRUPTED,
                    "--answer", "#7", "--wrong", "#9", "--compare", "--report", tmp_path / "attr")
    assert set(attr["scores"]) == {"resid_pre", "attn_out", "mlp_out"} and attr["correlation"] is not None
    assert (tmp_path / "attr" / "attribute_vs_patch.png").is_file()
    code, output = cli("introspect", "attribute", "--model", model, "--clean", CLEAN, "--corrupted", "The cat",
                       "--answer", "#7", "--wrong", "#9")
    assert code == 2 and "same length" in output


def test_dla_sums_with_a_lora_adapter_on_o_proj(checkpoint, adapter_dir):
    """Heads go through o_proj with its adapter (LoRA is linear), so the split stays exact."""
    import lazarus

    model, tokenizer, _ = lazarus.load_model(checkpoint("llama"), adapter_path=adapter_dir("llama"))
    ids = _ids(tokenizer, PROMPT)
    logits = np.array(model(ids)[0, -1].astype(mx.float32))
    target, baseline = int(np.argmax(logits)), int(np.argmin(logits))
    result = direct_logit_attribution(model, ids, target, -1, baseline)
    _check_sums(model, result, logits, target, baseline)
    assert max(abs(v) for v in result["head_remainder"]) < 1e-4
