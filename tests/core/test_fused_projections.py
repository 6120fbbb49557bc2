"""Fused projections (q/k/v and gate/up as one matmul each, lazarus.models.fused): the same logits
and greedy tokens as the separate layers in float32 on every family's tiny checkpoint, with the
same parameter names; LoRA, hooks, training and weights changed after loading keep working."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

import lazarus
import lazarus.models.fused as fused
from lazarus.adapters import AdapterConfig, LoraParameters, apply_adapter
from lazarus.generation import generate_tokens
from lazarus.models.fused import refresh_fused
from tests.conftest import FAMILIES

IDS = mx.array([[(i * 37 + 11) % 500 + 6 for i in range(20)],
                [(i * 53 + 7) % 500 + 6 for i in range(20)]], dtype=mx.int32)


def load(path, fuse: bool, monkeypatch):
    monkeypatch.setattr(fused, "FUSE_AT_LOAD", fuse)
    model, _, _ = lazarus.load_model(path)
    return model


def greedy(model, compiled: bool = True) -> list:
    return [t.tolist() for t in generate_tokens(model, IDS, max_tokens=10, compiled=compiled)]


def groups(model) -> list:
    return [getattr(owner, attr) for owner, attr in model.__dict__.get("_lazarus_fused_owners", ())]


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_matches_separate_layers(tiny_checkpoint, monkeypatch, family):
    path = tiny_checkpoint(family)
    plain, model = load(path, False, monkeypatch), load(path, True, monkeypatch)
    made = groups(model)
    gated = family != "starcoder2"  # StarCoder2's MLP has no gate
    assert len(made) == len(model.blocks) * (2 if gated else 1) and all(g is not None for g in made)
    assert groups(plain) == []
    # the same parameters under the same names: checkpoints, adapters and probes see no change
    ours, theirs = dict(tree_flatten(model.parameters())), dict(tree_flatten(plain.parameters()))
    assert ours.keys() == theirs.keys()
    assert all(mx.array_equal(ours[k], theirs[k]) for k in ours)
    assert mx.abs(model(IDS) - plain(IDS)).max().item() < 1e-5
    assert greedy(model) == greedy(plain) == greedy(model, compiled=False)


def lora(model, keys=("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj")):
    apply_adapter(model, AdapterConfig(fine_tune_type="lora", num_layers=-1,
                                       lora_parameters=LoraParameters(rank=4, scale=2.0, keys=keys)))
    mx.random.seed(1)
    for _, module in model.named_modules():  # a trained-looking update, not the zero start
        if hasattr(module, "lora_b"):
            module.lora_b = mx.random.normal(module.lora_b.shape) * 0.05
    return model


def test_lora_adds_its_update_to_the_fused_matmul(tiny_checkpoint, monkeypatch):
    path = tiny_checkpoint("qwen2")  # q/k/v biases
    plain, model = lora(load(path, False, monkeypatch)), lora(load(path, True, monkeypatch))
    model.update(plain.trainable_parameters())
    assert all(g is not None for g in groups(model))
    assert mx.abs(model(IDS) - plain(IDS)).max().item() < 1e-5
    assert greedy(model) == greedy(plain)
    assert all(g is not None for g in groups(model))  # LoRA layers around the parts keep the fusion

    def loss(m):
        return nn.losses.cross_entropy(m(IDS[:, :-1]), IDS[:, 1:]).mean()

    model.train()
    plain.train()
    grads = dict(tree_flatten(nn.value_and_grad(model, loss)(model)[1]))
    expected = dict(tree_flatten(nn.value_and_grad(plain, loss)(plain)[1]))
    assert grads.keys() == expected.keys() and grads
    assert max(mx.abs(grads[k] - expected[k]).max().item() for k in grads) < 1e-5


def test_hooks_see_the_same_activations(tiny_checkpoint, monkeypatch):
    path = tiny_checkpoint("llama")
    seen = {}
    for fuse in (False, True):
        model = load(path, fuse, monkeypatch)
        names = ("blocks.0.mlp.hook_post", "blocks.1.attn.hook_z")
        with model.hooks([(n, lambda x, name, n=n, f=fuse: seen.setdefault((f, n), x)) for n in names]):
            model(IDS)
    for name in ("blocks.0.mlp.hook_post", "blocks.1.attn.hook_z"):
        assert mx.abs(seen[(True, name)] - seen[(False, name)]).max().item() < 1e-5


def test_weights_changed_after_loading_are_used(tiny_checkpoint, monkeypatch):
    """A full fine-tune step, a reload or a swap replaces the base weights: the forward pass and
    the generation follow them, and generating re-fuses them."""
    path = tiny_checkpoint("llama")
    plain, model = load(path, False, monkeypatch), load(path, True, monkeypatch)
    before = groups(model)
    changed = {k: v * 1.5 for k, v in tree_flatten(plain.parameters()) if k.endswith(("q_proj.weight", "up_proj.weight"))}
    for m in (plain, model):
        m.load_weights(list(changed.items()), strict=False)
    assert mx.abs(model(IDS) - plain(IDS)).max().item() < 1e-5  # the separate layers, for now
    assert greedy(model) == greedy(plain)
    after = groups(model)
    assert all(a is not None and a is not b for a, b in zip(after, before, strict=True))  # re-fused
    assert mx.abs(model(IDS) - plain(IDS)).max().item() < 1e-5

    # new arrays holding the same values (what a compiled training step hands back) are adopted
    model.update(tree_map_copy(model.parameters()))
    refresh_fused(model)
    assert groups(model) == after


def tree_map_copy(tree):
    from mlx.utils import tree_map

    return tree_map(lambda a: mx.array(a) + 0, tree)


def test_training_the_base_weights_releases_the_fused_copy(tiny_checkpoint, monkeypatch):
    import mlx.optimizers as optim

    path = tiny_checkpoint("llama")
    plain, model = load(path, False, monkeypatch), load(path, True, monkeypatch)

    def loss(m):
        return nn.losses.cross_entropy(m(IDS[:, :-1]), IDS[:, 1:]).mean()

    for m in (plain, model):
        m.train()
        optimizer = optim.SGD(learning_rate=0.5)
        for _ in range(2):
            _, grads = nn.value_and_grad(m, loss)(m)
            optimizer.update(m, grads)
        m.eval()
    assert all(g.leaves is None for g in groups(model))  # nothing is held twice while training
    assert mx.abs(model(IDS) - plain(IDS)).max().item() < 1e-4
    assert greedy(model) == greedy(plain)
    assert all(g is not None and g.leaves is not None for g in groups(model))


def test_quantized_layers_fuse(tiny_checkpoint, monkeypatch):
    from lazarus.models.quantize import quantize_model

    path = tiny_checkpoint("llama")
    plain, model = load(path, False, monkeypatch), load(path, True, monkeypatch)
    for m in (plain, model):
        quantize_model(m, bits=4, group_size=32)
    assert greedy(model) == greedy(plain)  # generating re-fused the quantized layers
    assert all(g is not None and g.quant for g in groups(model))
    assert mx.abs(model(IDS) - plain(IDS)).max().item() < 1e-4
