"""The shared RL machinery (lazarus.training.rl): advantages, k3 KL, GAE, every loss type against a
value worked out by hand on a fixed batch, and batched rollouts against one-by-one generation."""

from __future__ import annotations

import math

import numpy as np
import pytest


def test_group_advantages_sum_to_zero_within_each_group_and_flag_zero_spread():
    from lazarus.training.rl import group_advantages

    rewards = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 3.0, -1.0, 2.0, 0.0]
    for scale in ("group", "batch", "none"):
        advantages, zero = group_advantages(rewards, 4, scale)
        assert advantages.reshape(3, 4).sum(axis=1) == pytest.approx([0, 0, 0], abs=1e-5)
        assert zero.tolist() == [False, True, False]
    advantages, _ = group_advantages(rewards, 4, "group")
    # group 0: mean 0.5, unbiased std sqrt(1/3) -> ±0.5 / (0.57735 + 1e-4)
    assert advantages[:4] == pytest.approx([0.5 / (math.sqrt(1 / 3) + 1e-4) * s for s in (1, -1, -1, 1)], rel=1e-5)
    assert advantages[4:8].tolist() == [0, 0, 0, 0]
    assert group_advantages(rewards, 4, "none")[0][8:] == pytest.approx([2.0, -2.0, 1.0, -1.0])


def test_k3_kl_is_exactly_zero_when_policy_equals_reference_and_positive_otherwise():
    import mlx.core as mx

    from lazarus.training.rl import k3_kl

    logp = mx.array([[-0.1, -2.3, -5.0], [-0.7, -0.01, -9.0]])
    assert mx.all(k3_kl(logp, logp) == 0).item()
    other = logp + mx.array([[0.3, -0.2, 0.0], [1.0, -1.0, 0.5]])
    kl = np.array(k3_kl(logp, other))
    d = np.array(other - logp)
    assert kl == pytest.approx(np.exp(d) - d - 1, rel=1e-6)
    assert (kl[d != 0] > 0).all()


def test_gae_against_a_hand_computed_example():
    from lazarus.training.rl import gae

    rewards = np.array([[0.0, 0.0, 1.0, 0.0], [0.0, 0.5, 0.0, 0.0]])
    values = np.array([[0.5, 0.4, 0.6, 9.0], [9.0, 0.2, 0.1, 9.0]])
    mask = np.array([[1, 1, 1, 0], [0, 1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0, backwards: d2 = 1 - 0.6 = 0.4; d1 = 0 + 0.9*0.6 - 0.4 = 0.14; d0 = 0.9*0.4 - 0.5 = -0.14
    # A2 = 0.4; A1 = 0.14 + 0.72*0.4 = 0.428; A0 = -0.14 + 0.72*0.428 = 0.16816
    # row 1 (steps 1, 2): d2 = 0 - 0.1 = -0.1; d1 = 0.5 + 0.9*0.1 - 0.2 = 0.39; A1 = 0.39 - 0.072 = 0.318
    assert advantages == pytest.approx(np.array([[0.16816, 0.428, 0.4, 0], [0, 0.318, -0.1, 0]]), abs=1e-6)
    assert returns == pytest.approx(np.array([[0.66816, 0.828, 1.0, 0], [0, 0.518, 0.0, 0]]), abs=1e-6)


# a fixed batch: 2 completions of 3 and 2 tokens (the last position of row 1 is padding)
LOGP = [[-1.0, -0.5, -2.0], [-0.2, -1.5, -3.0]]
OLD = [[-1.1, -0.5, -1.6], [-0.2, -1.0, -3.0]]
REF = [[-1.0, -0.7, -2.0], [-0.4, -1.5, -3.0]]
ADV = [1.0, -0.5]
MASK = [[1, 1, 1], [1, 1, 0]]
EPS, EPS_HIGH, BETA, MAX_LEN = 0.2, 0.28, 0.1, 4


def _by_hand(loss_type: str) -> float:
    """The loss of the fixed batch, token by token, in plain Python."""
    def clip(x, lo, hi):
        return min(max(x, lo), hi)

    per_row = []
    for logp, old, ref, adv, mask in zip(LOGP, OLD, REF, ADV, MASK, strict=True):
        n = sum(mask)
        seq_ratio = math.exp(sum((lp - o) for lp, o, m in zip(logp, old, mask, strict=True) if m) / n)
        terms = []
        for lp, o, rf, m in zip(logp, old, ref, mask, strict=True):
            if not m:
                continue
            ratio = seq_ratio if loss_type == "gspo" else math.exp(lp - o)
            policy = -min(ratio * adv, clip(ratio, 1 - EPS, 1 + EPS_HIGH) * adv)
            kl = math.exp(rf - lp) - (rf - lp) - 1
            terms.append(policy + BETA * kl)
        per_row.append(terms)
    tokens = sum(len(t) for t in per_row)
    if loss_type in ("grpo", "gspo"):
        return sum(sum(t) / len(t) for t in per_row) / len(per_row)
    if loss_type == "dr-grpo":
        return sum(sum(t) for t in per_row) / (len(per_row) * MAX_LEN)
    return sum(sum(t) for t in per_row) / tokens  # bnpo and dapo agree on a single micro-batch


@pytest.mark.parametrize("loss_type", ["grpo", "dr-grpo", "bnpo", "dapo", "gspo"])
def test_each_loss_type_against_a_hand_computed_value(loss_type):
    import mlx.core as mx

    from lazarus.training.rl import grpo_loss

    total, count, metrics = grpo_loss(mx.array(LOGP), mx.array(OLD), mx.array(REF), mx.array(ADV), mx.array(MASK),
                                      loss_type=loss_type, epsilon=EPS, epsilon_high=EPS_HIGH, beta=BETA,
                                      max_completion_length=MAX_LEN)
    assert total.item() / count.item() == pytest.approx(_by_hand(loss_type), rel=1e-5)
    assert count.item() == (5 if loss_type == "dapo" else 2)
    # each metric comes with its token count (NAME:count), so logged values are global token means
    assert set(metrics) == {"kl", "clip_fraction", "kl:count", "clip_fraction:count"}


def test_filler_rows_carry_no_loss_and_the_gradient_ratio_is_one_on_policy():
    import mlx.core as mx

    from lazarus.training.rl import grpo_loss

    args = dict(loss_type="grpo", epsilon=EPS, epsilon_high=EPS_HIGH, beta=0.0)
    total, count, _ = grpo_loss(mx.array(LOGP), mx.array(OLD), None, mx.array(ADV), mx.array(MASK),
                                mx.array([1.0, 0.0]), **args)
    alone = grpo_loss(mx.array(LOGP[:1]), mx.array(OLD[:1]), None, mx.array(ADV[:1]), mx.array(MASK[:1]), **args)
    assert (total.item(), count.item()) == pytest.approx((alone[0].item(), 1.0))

    # on-policy (old = logp): loss -mean(A), gradient -A / |o| per token
    def f(logp):
        return grpo_loss(logp, mx.stop_gradient(logp), None, mx.array(ADV), mx.array(MASK), **args)[0]

    grad = np.array(mx.grad(f)(mx.array(LOGP)))
    assert grad == pytest.approx(np.array([[-1 / 3] * 3, [0.25, 0.25, 0.0]]), abs=1e-6)


def test_ppo_loss_matches_its_formula_on_a_fixed_batch():
    import mlx.core as mx

    from lazarus.training.rl import ppo_loss

    logp, old = np.array([[-1.0, -0.5]]), np.array([[-1.2, -0.5]])
    adv, values, old_values, returns = (np.array([[0.5, -1.0]]), np.array([[0.3, 0.9]]),
                                        np.array([[0.0, 0.8]]), np.array([[1.0, 0.5]]))
    total, count, metrics = ppo_loss(*(mx.array(a) for a in (logp, old, adv, values, old_values, returns)),
                                     mx.array([[1, 1]]), epsilon=0.1, value_clip=0.2, value_coef=0.5)
    r0 = math.exp(0.2)  # above 1.1 with A > 0: clipped
    policy = [-min(r0 * 0.5, 1.1 * 0.5), 1.0]
    value = [0.5 * max((0.3 - 1) ** 2, (0.2 - 1) ** 2), 0.5 * max(0.4 ** 2, 0.4 ** 2)]
    assert count.item() == 2
    assert total.item() == pytest.approx(sum(p + 0.5 * v for p, v in zip(policy, value, strict=True)), rel=1e-5)
    assert metrics["clip_fraction"].item() == 1.0


def test_batched_rollouts_equal_one_by_one_generation_with_greedy_sampling(tiny_checkpoint):
    import lazarus
    from lazarus.generation import SamplingConfig
    from lazarus.training.rl import rollout

    model, tokenizer, _ = lazarus.load_model(str(tiny_checkpoint("llama")))
    texts = ["What is 2 + 3?", "Compute 17 * 4.", "Hi", "Ana has 3 apples and gets 4 more."]
    prompts = [tokenizer.encode(t) for t in texts]
    ro = rollout(model, tokenizer, prompts, group_size=2, max_completion_length=12,
                 sampling=SamplingConfig(temperature=0.0, seed=3))
    assert len(ro) == 8 and ro.group_size == 2
    for i, prompt in enumerate(prompts):
        alone = lazarus.generate(model, tokenizer, prompt, max_tokens=12)
        for row in (2 * i, 2 * i + 1):
            assert ro.completion_ids[row] == alone.token_ids
            assert ro.completions[row] == alone.text
            n = len(prompt)
            assert ro.ids[row, :n].tolist() == prompt
            assert ro.ids[row, n:n + len(alone.token_ids)].tolist() == alone.token_ids
            assert ro.mask[row].sum() == len(alone.token_ids) and ro.mask[row, :n].sum() == 0
