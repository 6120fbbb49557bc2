"""Hook points: what run_with_cache returns, hooks that change the output, identity hooks change nothing."""

from __future__ import annotations

import mlx.core as mx
import pytest

import lazarus
from lazarus.errors import LazarusError
from lazarus.generation import generate_tokens

IDS = mx.array([[(i * 29 + 3) % 500 + 6 for i in range(12)]] * 2, dtype=mx.int32)


@pytest.fixture(scope="module", params=["llama", "gemma2", "granite"])
def model(request, tiny_checkpoint):
    model, _, _ = lazarus.load_model(tiny_checkpoint(request.param))
    return model


def test_hook_names_follow_transformer_lens(model):
    names = model.hook_names()
    assert names[0] == "hook_embed" and names[-1] == "ln_final.hook_normalized"
    for layer in range(len(model.blocks)):
        for hook in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post", "attn.hook_pattern"):
            assert f"blocks.{layer}.{hook}" in names


def test_run_with_cache_returns_exactly_what_was_asked(model):
    asked = ["blocks.1.hook_resid_post", "hook_embed", "blocks.0.attn.hook_pattern"]
    logits, acts = model.run_with_cache(IDS, names=asked)
    assert set(acts) == set(asked)
    assert acts["hook_embed"].shape == (2, 12, 64)
    pattern = acts["blocks.0.attn.hook_pattern"]
    assert pattern.shape == (2, model.args.num_attention_heads, 12, 12)
    assert mx.allclose(pattern.sum(-1), mx.ones((2, model.args.num_attention_heads, 12)), atol=1e-5)
    assert mx.all(mx.triu(pattern[0, 0], k=1) == 0).item()  # causal
    assert mx.allclose(logits, model(IDS), atol=1e-5)

    _, by_glob = model.run_with_cache(IDS, names="blocks.*.hook_mlp_out")
    assert sorted(by_glob) == [f"blocks.{i}.hook_mlp_out" for i in range(len(model.blocks))]
    _, by_predicate = model.run_with_cache(IDS, names=lambda n: n.endswith("hook_normalized"))
    assert list(by_predicate) == ["ln_final.hook_normalized"]
    _, everything = model.run_with_cache(IDS)
    assert list(everything) == model.hook_names()
    assert not model._hook_registry.fns  # nothing stays attached


def test_residual_stream_decomposes(model):
    _, acts = model.run_with_cache(IDS)
    for layer in range(len(model.blocks)):
        pre, post = acts[f"blocks.{layer}.hook_resid_pre"], acts[f"blocks.{layer}.hook_resid_post"]
        parts = pre + acts[f"blocks.{layer}.hook_attn_out"] + acts[f"blocks.{layer}.hook_mlp_out"]
        assert mx.allclose(parts, post, atol=1e-4)
    assert mx.allclose(acts["hook_embed"], acts["blocks.0.hook_resid_pre"])
    assert mx.allclose(model.unembed(acts["ln_final.hook_normalized"]), model(IDS), atol=1e-5)


def test_sliding_window_pattern_is_zero_outside_the_window(tiny_checkpoint):
    model, _, _ = lazarus.load_model(tiny_checkpoint("gemma2"))
    _, acts = model.run_with_cache(IDS, names=["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"])
    window = model.args.sliding_window
    sliding, full = acts["blocks.0.attn.hook_pattern"][0, 0], acts["blocks.1.attn.hook_pattern"][0, 0]
    assert mx.all(mx.tril(sliding, k=-window) == 0).item()
    assert mx.tril(full, k=-window).sum().item() > 0  # the full-attention layer does look back further


def test_modifying_hooks_change_the_output(model):
    base = model(IDS)
    zero_mlp = model.run_with_hooks(IDS, fwd_hooks=[("blocks.1.hook_mlp_out", lambda x, name: mx.zeros_like(x))])
    assert mx.abs(zero_mlp - base).max().item() > 1e-3
    uniform = model.run_with_hooks(IDS, fwd_hooks=[
        ("blocks.0.attn.hook_pattern", lambda p, name: mx.tril(mx.ones_like(p)) / mx.arange(1, 13)[:, None])])
    assert mx.abs(uniform - base).max().item() > 1e-3
    # the hook is gone afterwards
    assert mx.array_equal(model(IDS), base)


def test_identity_hooks_change_nothing(model):
    base = model(IDS)
    non_pattern = [n for n in model.hook_names() if not n.endswith("hook_pattern")]
    keep = model.run_with_hooks(IDS, fwd_hooks=[(n, lambda x, name: None) for n in non_pattern])
    same = model.run_with_hooks(IDS, fwd_hooks=[(n, lambda x, name: x) for n in non_pattern])
    assert mx.array_equal(keep, base) and mx.array_equal(same, base)
    # a pattern hook switches attention to the explicit form: equal within float rounding
    everything = model.run_with_hooks(IDS, fwd_hooks=[(n, lambda x, name: x) for n in model.hook_names()])
    assert mx.abs(everything - base).max().item() < 1e-5


def test_hooks_context_manager_steers_generation(tiny_checkpoint):
    model, _, _ = lazarus.load_model(tiny_checkpoint("llama"))
    prompt = IDS[:1]
    plain = [t.item() for t in generate_tokens(model, prompt, max_tokens=6)]
    direction = model.model.embed_tokens.weight[42] * 20.0
    with model.hooks([("blocks.1.hook_resid_post", lambda x, name: x + direction)]):
        steered = [t.item() for t in generate_tokens(model, prompt, max_tokens=6)]
    assert steered != plain
    assert [t.item() for t in generate_tokens(model, prompt, max_tokens=6)] == plain


def test_hooks_work_under_grad(tiny_checkpoint):
    model, _, _ = lazarus.load_model(tiny_checkpoint("llama"))

    def loss(scale):
        logits = model.run_with_hooks(IDS, fwd_hooks=[("blocks.0.hook_mlp_out", lambda x, name: x * scale)])
        return logits[:, -1].sum()

    grad = mx.grad(loss)(mx.array(1.0))
    assert grad.item() != 0.0


def test_bad_hook_names_and_shapes_are_one_line_errors(model):
    with pytest.raises(LazarusError, match="no hook point named 'blocks.9.hook_resid_post'"):
        model.run_with_cache(IDS, names=["blocks.9.hook_resid_post"])
    with pytest.raises(LazarusError, match=r"hook on blocks.0.hook_attn_out returned shape"):
        model.run_with_hooks(IDS, fwd_hooks=[("blocks.0.hook_attn_out", lambda x, name: x[:, :1])])
    assert not model._hook_registry.fns
