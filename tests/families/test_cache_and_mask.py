"""KV-cache decoding equals full recompute; left-padded, masked batches equal unpadded single runs."""

from __future__ import annotations

import mlx.core as mx
import pytest

import lazarus
from lazarus.models.cache import KVCache
from tests.conftest import FAMILIES

TOKENS = [(i * 41 + 5) % 500 + 6 for i in range(20)]


@pytest.fixture(autouse=True)
def small_cache_blocks(monkeypatch):
    # grow the cache every 4 positions so the tests cross many growth boundaries
    monkeypatch.setattr(KVCache, "step", 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_incremental_decode_equals_full_recompute(tiny_checkpoint, family):
    model, _, _ = lazarus.load_model(tiny_checkpoint(family))
    ids = mx.array([TOKENS])
    full = model(ids)
    cache = model.make_cache()
    pieces = [model(ids[:, :7], cache=cache)]  # a chunked prefill, then one token at a time
    pieces.append(model(ids[:, 7:11], cache=cache))
    for t in range(11, 20):
        pieces.append(model(ids[:, t:t + 1], cache=cache))
    stepped = mx.concatenate(pieces, axis=1)
    assert cache[0].offset == 20
    assert mx.abs(stepped - full).max().item() < 1e-5


def left_pad(rows: list[list[int]], pad: int = 3) -> tuple[mx.array, mx.array]:
    longest = max(map(len, rows))
    ids = mx.array([[pad] * (longest - len(r)) + r for r in rows], dtype=mx.int32)
    mask = mx.array([[0] * (longest - len(r)) + [1] * len(r) for r in rows], dtype=mx.int32)
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_equals_unpadded_runs(tiny_checkpoint, family):
    model, _, _ = lazarus.load_model(tiny_checkpoint(family))
    rows = [TOKENS, TOKENS[3:14], TOKENS[::-1][:16]]
    ids, mask = left_pad(rows)
    batched = model(ids, mask=mask)
    for i, row in enumerate(rows):
        single = model(mx.array([row]))
        real = batched[i, ids.shape[1] - len(row):]
        assert mx.abs(real - single[0]).max().item() < 1e-4, f"row {i}"
    assert not mx.isnan(batched).any().item()  # pad rows stay finite too


@pytest.mark.parametrize("family", ["llama", "gemma2", "mistral"])
def test_left_padded_batch_decodes_like_single_runs(tiny_checkpoint, family):
    """Prefill a padded batch with its mask, then decode with the cache remembering the mask."""
    model, _, _ = lazarus.load_model(tiny_checkpoint(family))
    rows = [TOKENS[:12], TOKENS[5:10]]
    ids, mask = left_pad(rows)
    cache = model.make_cache()
    logits = model(ids, cache=cache, mask=mask)[:, -1]
    batched_tokens = []
    running = mask
    for step in range(8):
        nxt = mx.argmax(logits, axis=-1)
        batched_tokens.append(nxt.tolist())
        running = mx.concatenate([running, mx.ones((2, 1), dtype=running.dtype)], axis=1)
        # alternate: no mask (the cache remembers it), the full-width mask, a mask of the new token only
        step_mask = (None, running, mx.ones((2, 1)))[step % 3]
        logits = model(nxt[:, None], cache=cache, mask=step_mask)[:, -1]
    for i, row in enumerate(rows):
        cache1 = model.make_cache()
        logits1 = model(mx.array([row]), cache=cache1)[:, -1]
        tokens = []
        for _ in range(8):
            nxt = mx.argmax(logits1, axis=-1)
            tokens.append(nxt.item())
            logits1 = model(nxt[:, None], cache=cache1)[:, -1]
        assert tokens == [b[i] for b in batched_tokens], f"row {i}"


def test_mask_with_wrong_width_is_a_one_line_error(tiny_checkpoint):
    model, _, _ = lazarus.load_model(tiny_checkpoint("llama"))
    with pytest.raises(lazarus.errors.LazarusError, match="mask covers 5 positions; expected 4"):
        model(mx.array([[6, 7, 8, 9]]), mask=mx.ones((1, 5)))


def test_cache_trim_rewinds(tiny_checkpoint):
    model, _, _ = lazarus.load_model(tiny_checkpoint("qwen2"))
    ids = mx.array([TOKENS[:10]])
    cache = model.make_cache()
    model(ids, cache=cache)
    for c in cache:
        assert c.trim(3) == 3
    again = model(ids[:, 7:], cache=cache)
    assert mx.abs(again - model(ids)[:, 7:]).max().item() < 1e-5
