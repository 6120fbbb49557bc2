"""The model contract (lazarus.models.contract): every family fits it, and a family with another
block shape needs no core change (it supplies ``block_class``)."""

from __future__ import annotations

import mlx.core as mx
import pytest

from lazarus.models.contract import CausalModel, FamilyModule
from lazarus.models.transformer import CausalLM, DecoderBlock
from lazarus.plugins import get_registry
from tests.conftest import FAMILIES


def _family(name):
    return get_registry().get("family", name).load()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_fits_the_contract(family):
    module = _family(family)
    assert isinstance(module, FamilyModule)
    model = module.Model(module.ModelArgs.from_hf_config(module.tiny_config(64)))
    assert isinstance(model, CausalModel)
    assert model.family == family
    # the checkpoint layout round-trips through the contract's two methods
    saved = model.hf_weights()
    assert set(model.sanitize(saved)) == set(dict(_flat(model)))


def _flat(model):
    from mlx.utils import tree_flatten

    return tree_flatten(model.parameters())


class ParallelBlock(DecoderBlock):
    """GPT-J / NeoX style: attention and MLP read the same normed input, both added at once."""

    def __call__(self, x, mask=None, cache=None):
        normed = self.input_layernorm(x)
        return x + self.self_attn(normed, mask, cache) + self.mlp(normed)


class ParallelModel(CausalLM):
    family = "parallel-test"
    block_class = ParallelBlock


def test_a_family_supplies_its_block_class():
    llama = _family("llama")
    model = ParallelModel(llama.ModelArgs.from_hf_config(llama.tiny_config(64)))
    assert model.blocks and all(isinstance(block, ParallelBlock) for block in model.blocks)
    ids = mx.array([[5, 9, 2, 7, 11]])
    logits = model(ids)
    assert logits.shape == (1, 5, 64)
    # the block differs from llama's (so the class is used), and the KV cache works with it
    plain = llama.Model(model.args)
    plain.update(model.parameters())
    assert not mx.allclose(plain(ids), logits, atol=1e-4)
    cache = model.make_cache()
    model(ids[:, :4], cache=cache)
    assert mx.allclose(model(ids[:, 4:], cache=cache)[:, -1], logits[:, -1], atol=1e-4)
