"""GRPO's memory savings change no result: scoring a rollout a few rows at a time (LOSS_ROWS) gives
the loss, metrics and adapter of scoring it whole, for every loss type; chunked log-probs equal the
whole-vocabulary ones."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from tests.trainers.conftest import quiet_console
from tests.trainers.test_grpo import grpo_config, rows
from tests.trainers.toy_rewards import register_toy_rewards


@pytest.fixture(scope="module")
def math_prompts(math_sft_data):
    return math_sft_data.parent / "prompts"


def adapter(output):
    return mx.load(str(output / "adapters.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "gspo"])
def test_scoring_in_parts_equals_scoring_whole(tiny_llama, math_prompts, tmp_path, monkeypatch, loss_type):
    import lazarus_trainers.grpo as grpo

    register_toy_rewards()
    outputs = {}
    for name, loss_rows in (("parts", 3), ("whole", 10**6)):  # 4 prompts x 4 = 16 rows: 6 parts of <= 3
        monkeypatch.setattr(grpo, "LOSS_ROWS", loss_rows)
        output = tmp_path / name
        config = grpo_config(tiny_llama, math_prompts, output, max_steps=3, beta=0.1, loss_type=loss_type)
        grpo.GRPOTrainer(config, console=quiet_console()).train()
        outputs[name] = output
    parts, whole = rows(outputs["parts"]), rows(outputs["whole"])
    for a, b in zip(parts, whole, strict=True):
        for key in ("loss", "kl", "clip_fraction", "reward_mean"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    got, expected = adapter(outputs["parts"]), adapter(outputs["whole"])
    assert got.keys() == expected.keys()
    # Adam divides by the root of tiny second moments: float rounding of the sums shows at 1e-5
    assert max(mx.abs(got[k] - expected[k]).max().item() for k in got) < 1e-4


def test_chunked_logprobs_equal_whole_vocabulary(tiny_llama, monkeypatch):
    import lazarus
    from lazarus.training import reference

    model, _, _ = lazarus.load_model(tiny_llama)
    ids = mx.array(np.random.default_rng(0).integers(3, 500, size=(5, 23)), dtype=mx.int32)
    whole = reference.token_logprobs(model(ids[:, :-1]), ids[:, 1:])
    monkeypatch.setattr(reference, "LOGITS_CHUNK_BYTES", 5 * 512 * 4 * 3)  # 3 positions per chunk
    chunked = reference.model_token_logprobs(model, ids)
    assert chunked.shape == whole.shape and chunked.dtype == mx.float32
    assert mx.abs(chunked - whole).max().item() < 1e-5
    late = reference.model_token_logprobs(model, ids, start=7)  # the first 7 positions are skipped
    assert mx.all(late[:, :7] == 0).item() and mx.abs(late[:, 7:] - whole[:, 7:]).max().item() < 1e-5
    mask = mx.zeros(ids.shape, mx.int32).at[:, 9:].add(1)
    sums, per_token = reference.frozen_sequence_logprobs(model, ids, mask)
    assert mx.abs(per_token - whole * mask[:, 1:]).max().item() < 1e-5
    assert mx.abs(sums - (whole * mask[:, 1:]).sum(axis=1)).max().item() < 1e-4
