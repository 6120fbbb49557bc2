"""Activation patching restores clean runs; ablation zeroes exactly the ablated component."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from lazarus_introspect import activations
from lazarus_introspect.ablation import Ablation, ablation_effects, ablation_hook, component_means
from lazarus_introspect.patching import patch_layer_positions, patch_scan, run_patched

CLEAN = "The cat sat on the mat"
CORRUPTED = "The hat sat on the mat"


def _pair(tokenizer):
    clean = mx.array([tokenizer.encode(CLEAN)], dtype=mx.int32)
    corrupted = mx.array([tokenizer.encode(CORRUPTED)], dtype=mx.int32)
    assert clean.shape == corrupted.shape and (np.array(clean) != np.array(corrupted)).any()
    return clean, corrupted


@pytest.mark.parametrize("component", ["resid_pre", "attn_out", "mlp_out"])
def test_patching_every_position_restores_the_clean_logits(loaded, component):
    model, tokenizer = loaded("llama")
    clean, corrupted = _pair(tokenizer)
    clean_logits = np.array(model(clean))
    corrupted_logits = np.array(model(corrupted))
    assert not np.allclose(clean_logits, corrupted_logits, atol=1e-3)
    count = activations.num_layers(model)
    names = [activations.hook_name(component, layer) for layer in range(count)]
    _, cache = activations.run_with_cache(model, clean, names)
    if component == "resid_pre":  # the whole residual stream at one layer carries everything
        for name in names:
            np.testing.assert_allclose(np.array(run_patched(model, corrupted, cache[name], name)), clean_logits,
                                       rtol=1e-4, atol=1e-4)
    else:  # every branch output of every layer, all positions
        hooks = [(n, activations.replace_positions(cache[n])) for n in names]
        _, embed_cache = activations.run_with_cache(model, clean, ["hook_embed"])
        hooks.append(("hook_embed", activations.replace_positions(embed_cache["hook_embed"])))
        np.testing.assert_allclose(np.array(activations.run_with_hooks(model, corrupted, hooks)), clean_logits,
                                   rtol=1e-4, atol=1e-4)


def test_batched_position_patching_matches_one_position_at_a_time(loaded):
    model, tokenizer = loaded("llama")
    clean, corrupted = _pair(tokenizer)
    name = "blocks.1.hook_resid_pre"
    _, cache = activations.run_with_cache(model, clean, [name])
    batched = np.array(patch_layer_positions(model, corrupted, cache[name], name))
    for position in range(clean.shape[1]):
        single = np.array(run_patched(model, corrupted, cache[name], name, [position]))
        np.testing.assert_allclose(batched[position], single[0], rtol=1e-4, atol=1e-4)


def test_patch_scan_is_normalised_clean_one_corrupted_zero(loaded):
    model, tokenizer = loaded("llama")
    clean, corrupted = _pair(tokenizer)
    logits = np.array(model(clean))[0, -1]
    answer, wrong = (int(i) for i in np.argsort(-logits)[:2])
    scan = patch_scan(model, clean, corrupted, answer, wrong)
    resid = np.array(scan["scores"]["resid"])
    assert resid.shape == (activations.num_layers(model), clean.shape[1])
    changed = int(np.flatnonzero(np.array(clean)[0] != np.array(corrupted)[0])[0])
    # at layer 0 the residual at the changed token carries the whole difference, elsewhere nothing
    assert resid[0, changed] == pytest.approx(1.0, abs=1e-3)
    assert np.abs(np.delete(resid[0], changed)).max() < 1e-3
    # causality: positions before the changed token are the same in both runs at every layer
    assert np.abs(resid[:, :changed]).max() < 1e-3
    for component in ("attn_out", "mlp_out"):
        assert np.array(scan["scores"][component]).shape == resid.shape
    assert scan["clean_logit_diff"] > 0  # the answer is the clean top-1, the wrong token its runner-up


ALL_BRANCHES = ["hook_embed"] + [f"blocks.{L}.{h}" for L in range(2)
                                 for h in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")]


@pytest.mark.parametrize("kind,layer", [("attn", 0), ("mlp", 0), ("attn", 1), ("mlp", 1)])
def test_zero_ablation_changes_exactly_that_component(loaded, kind, layer):
    model, tokenizer = loaded("llama")
    ids = mx.array([tokenizer.encode(CLEAN)], dtype=mx.int32)
    _, base = activations.run_with_cache(model, ids, ALL_BRANCHES)
    ablation = Ablation(kind, layer)
    with activations.attached(model, [(ablation.hook, ablation_hook(ablation, "zero"))]):
        _, ablated = activations.run_with_cache(model, ids, ALL_BRANCHES)
    order = ALL_BRANCHES.index(ablation.hook)
    for name in ALL_BRANCHES[:order]:
        np.testing.assert_array_equal(np.array(ablated[name]), np.array(base[name]), err_msg=name)
    assert not np.any(np.array(ablated[ablation.hook]))
    assert np.any(np.array(base[ablation.hook]))
    after = ALL_BRANCHES[order + 1:]
    assert not np.allclose(np.array(ablated[after[-1]]), np.array(base[after[-1]]))


def test_zero_ablating_one_head_zeroes_only_that_head(loaded):
    model, tokenizer = loaded("llama")
    ids = mx.array([tokenizer.encode(CLEAN)], dtype=mx.int32)
    names = ["blocks.1.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.1.hook_attn_out"]
    _, base = activations.run_with_cache(model, ids, names)
    ablation = Ablation("head", 1, 2)
    with activations.attached(model, [(ablation.hook, ablation_hook(ablation, "zero"))]):
        _, ablated = activations.run_with_cache(model, ids, names)
    z_base, z_ablated = np.array(base["blocks.1.attn.hook_z"]), np.array(ablated["blocks.1.attn.hook_z"])
    assert z_base.shape[2] == model.args.num_attention_heads  # (B, T, H, Dh)
    assert not np.any(z_ablated[:, :, 2])
    np.testing.assert_array_equal(np.delete(z_ablated, 2, axis=2), np.delete(z_base, 2, axis=2))
    np.testing.assert_array_equal(np.array(ablated["blocks.1.hook_resid_pre"]), np.array(base["blocks.1.hook_resid_pre"]))
    # what the head wrote, through o_proj, is exactly what attn_out lost
    o_proj = model.blocks[1].self_attn.o_proj
    head_dim = z_base.shape[-1]
    only_head = np.zeros_like(z_base)
    only_head[:, :, 2] = z_base[:, :, 2]
    flat = mx.array(only_head.reshape(*only_head.shape[:2], -1))
    contribution = np.array(o_proj(flat) - o_proj(mx.zeros_like(flat)))
    assert head_dim * z_base.shape[2] == flat.shape[-1]
    np.testing.assert_allclose(np.array(base["blocks.1.hook_attn_out"]) - np.array(ablated["blocks.1.hook_attn_out"]),
                               contribution, rtol=1e-4, atol=1e-5)


def test_batched_ablation_effects_match_single_runs_and_mean_ablation(loaded):
    model, tokenizer = loaded("llama")
    ids = mx.array([tokenizer.encode(CLEAN)], dtype=mx.int32)
    target = int(np.argmax(np.array(model(ids))[0, -1]))
    ablations = [Ablation("head", 0, 1), Ablation("attn", 1), Ablation("mlp", 0)]
    for mode in ("zero", "mean"):
        means = component_means(model, [ids], sorted({a.hook for a in ablations})) if mode == "mean" else None
        effects = ablation_effects(model, ids, ablations, target, mode=mode, means=means, batch_size=2)
        for ablation, effect in zip(ablations, effects, strict=True):
            hook = ablation_hook(ablation, mode, None if means is None else means[ablation.hook])
            logits = activations.run_with_hooks(model, ids, [(ablation.hook, hook)])[0, -1]
            assert effect["prob"] == pytest.approx(mx.softmax(logits)[target].item(), rel=1e-4, abs=1e-6)
