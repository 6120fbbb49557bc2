"""Every loss and logged metric of grpo, ppo, dpo and orpo against a float64 numpy reference
written here from the formula (docs/rl.md and docs/preference.md name each one's source), on
random inputs with uneven masks, through the trainers' own ``score_rollout`` / ``batch_arrays`` /
``loss``. A step split into several micro-batches must give what one big batch gives (bnpo, whose
normaliser is the micro-batch by definition, excepted).

The policy is a toy "language model" (logits = a token table plus a position table, a hidden
state for PPO's value head) so that its log-probs can be recomputed in float64 here.
"""

from __future__ import annotations

import types

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

VOCAB, WIDTH, HIDDEN = 11, 40, 6
RTOL, ATOL = 2e-5, 2e-6  # float32 against float64


# -- a policy whose log-probs are easy to recompute ------------------------------------------------------
class ToyPolicy(nn.Module):
    """Logits ``token[ids] + position[t]``; hidden state ``hidden_token[ids] + hidden_position[t]``
    read by a linear ``value_head`` (what PPO needs)."""

    def __init__(self, seed: int, scale: float = 2.0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.token = mx.array(rng.normal(0, scale, (VOCAB, VOCAB)).astype(np.float32))
        self.position = mx.array(rng.normal(0, 0.5, (WIDTH, VOCAB)).astype(np.float32))
        self.hidden_token = mx.array(rng.normal(0, 1, (VOCAB, HIDDEN)).astype(np.float32))
        self.hidden_position = mx.array(rng.normal(0, 1, (WIDTH, HIDDEN)).astype(np.float32))
        self.value_head = nn.Linear(HIDDEN, 1)
        self.value_head.weight = mx.array(rng.normal(0, 0.5, (1, HIDDEN)).astype(np.float32))
        self.value_head.bias = mx.array([0.3], dtype=mx.float32)
        self.args = types.SimpleNamespace(hidden_size=HIDDEN)

    def __call__(self, ids):
        return self.token[ids] + self.position[: ids.shape[1]]

    def run_with_cache(self, ids, names):
        hidden = self.hidden_token[ids] + self.hidden_position[: ids.shape[1]]
        return self(ids), {name: hidden for name in names}

    def f64(self, name):
        """A float64 copy of a table (``value_head.weight`` too), for the references."""
        value = self
        for part in name.split("."):
            value = getattr(value, part)
        return np.array(value, dtype=np.float64)


def logsumexp(x, axis=-1):
    top = x.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def ref_logits(model: ToyPolicy, ids: np.ndarray) -> np.ndarray:
    """(B, T-1, V) float64 logits of the positions that predict tokens 1..T-1."""
    inputs = ids[:, :-1]
    return model.f64("token")[inputs] + model.f64("position")[: inputs.shape[1]]


def ref_token_logprobs(model: ToyPolicy, ids: np.ndarray) -> np.ndarray:
    logits = ref_logits(model, ids)
    logp = logits - logsumexp(logits)[..., None]
    return np.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]


def ref_entropy(model: ToyPolicy, ids: np.ndarray) -> np.ndarray:
    logits = ref_logits(model, ids)
    logp = logits - logsumexp(logits)[..., None]
    return -(np.exp(logp) * logp).sum(-1)


def ref_values(model: ToyPolicy, ids: np.ndarray) -> np.ndarray:
    inputs = ids[:, :-1]
    hidden = model.f64("hidden_token")[inputs] + model.f64("hidden_position")[: inputs.shape[1]]
    return hidden @ model.f64("value_head.weight")[0] + model.f64("value_head.bias")[0]


def accumulate(trainer, model, batches, training=True):
    """What the trainer base does over one step: sum totals, counts and metrics of the
    micro-batches, then divide (``metric_means``). Each micro-batch also goes through the
    compiled step the trainer trains with (``mx.compile``), which must agree."""
    import mlx.optimizers as optim

    from lazarus.training.trainer import metric_means

    trainer.model, trainer.optimizer = model, optim.Adam(learning_rate=1e-3)
    micro_step, _, eval_step = trainer._build_steps()
    total, count, aux = 0.0, 0.0, {}
    for batch in batches:
        arrays = trainer.batch_arrays(batch, training=training)
        t, c, m = trainer.loss(model, **arrays)
        compiled = micro_step(arrays) if training else eval_step(arrays)
        np.testing.assert_allclose([compiled[0].item(), compiled[1].item()], [t.item(), c.item()], rtol=1e-5)
        assert set(compiled[2]) == set(m)
        total, count = total + float(t.item()), count + float(c.item())
        for k, v in m.items():
            aux[k] = aux.get(k, 0.0) + v
    return total / count, metric_means({k: mx.array(v) for k, v in aux.items()}, count)


def split(n: int, parts: list[int]) -> list[np.ndarray]:
    edges = np.cumsum([0, *parts])
    assert edges[-1] == n
    return [np.arange(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


# -- rollouts (grpo, ppo) --------------------------------------------------------------------------------
def random_sequences(rng, rows: int, group: int):
    """``rows`` prompts (1-5 tokens) each answered ``group`` times (1-12 tokens): uneven masks."""
    prompts, completions = [], []
    for _ in range(rows):
        prompt = list(rng.integers(0, VOCAB, rng.integers(1, 6)))
        for _ in range(group):
            prompts.append(prompt)
            completions.append(list(rng.integers(0, VOCAB, rng.integers(1, 13))))
    return prompts, completions


def make_rollout(prompts, completions, group):
    from lazarus.training import rl

    return rl.assemble_rollout([list(map(int, p)) for p in prompts], [list(map(int, c)) for c in completions],
                               ["x"] * len(prompts), ["stop"] * len(prompts), group_size=group)


def rollout_batches(seqs, group, parts, arrays_for, weights):
    """One RolloutBatch per micro-batch of ``parts`` rows (each padded to its own width)."""
    from lazarus_trainers.grpo import RolloutBatch

    prompts, completions = seqs
    out = []
    for rows in split(len(prompts), parts):
        ro = make_rollout([prompts[i] for i in rows], [completions[i] for i in rows], group)
        out.append(RolloutBatch(ro, arrays_for(ro, rows), weights[rows].astype(np.float32), ()))
    return out


def padded(seqs_rows, prompts, completions, width):
    """(ids, target mask) of the given rows at one common width, for the references."""
    ids = np.zeros((len(seqs_rows), width), dtype=np.int64)
    mask = np.zeros((len(seqs_rows), width), dtype=np.float64)
    for n, i in enumerate(seqs_rows):
        p, c = prompts[i], completions[i]
        ids[n, :len(p) + len(c)] = p + c
        mask[n, len(p):len(p) + len(c)] = 1
    return ids, mask


# -- GRPO ------------------------------------------------------------------------------------------------
def grpo_reference(logp, old, ref, adv, mask, *, loss_type, eps, eps_high, beta, max_len, parts):
    """The GRPO family as TRL 1.16 writes it (float64): loss and kl / clip_fraction metrics."""
    a = adv[:, None]
    lengths = mask.sum(1)
    log_ratio = (logp - old) * mask
    if loss_type == "gspo":
        log_ratio = np.repeat((log_ratio.sum(1) / lengths)[:, None], logp.shape[1], axis=1)
    ratio = np.exp(log_ratio)
    per_token = -np.minimum(ratio * a, np.clip(ratio, 1 - eps, 1 + eps_high) * a)
    diff = (ref - logp) * mask
    kl = np.exp(diff) - diff - 1
    per_token = per_token + beta * kl
    clipped = ((ratio < 1 - eps) & (a < 0)) | ((ratio > 1 + eps_high) & (a > 0))
    masked = per_token * mask
    if loss_type in ("grpo", "gspo"):
        loss = (masked.sum(1) / lengths).mean()
    elif loss_type == "dr-grpo":
        loss = masked.sum() / (len(logp) * max_len)
    elif loss_type == "dapo":
        loss = masked.sum() / mask.sum()
    else:  # bnpo: a token mean per micro-batch, the micro-batches weighted by their sequences
        loss = sum(masked[r].sum() / mask[r].sum() * len(r) for r in split(len(logp), parts)) / len(logp)
    metrics = {"kl": (kl * mask).sum() / mask.sum()}
    metrics["clip_fraction"] = clipped[:, 0].mean() if loss_type == "gspo" else (clipped * mask).sum() / mask.sum()
    return loss, metrics


@pytest.mark.parametrize("loss_type", ["grpo", "dr-grpo", "bnpo", "dapo", "gspo"])
@pytest.mark.parametrize("num_iterations", [1, 2])
def test_grpo_loss_and_metrics_equal_the_reference_over_micro_batches(loss_type, num_iterations, tmp_path):
    from lazarus.training.reference import ReferenceModel
    from lazarus_trainers.grpo import GRPOConfig, GRPOTrainer

    rng = np.random.default_rng(7)
    group, prompts_n = 3, 6
    seqs = random_sequences(rng, prompts_n, group)
    n = len(seqs[0])
    weights = np.ones(n)
    weights[-group:] = 0  # a filler group (ranks kept in step) counts for nothing
    config = GRPOConfig(model="toy", data="toy", output=str(tmp_path), loss_type=loss_type, beta=0.04,
                        epsilon=0.2, epsilon_high=0.28, num_iterations=num_iterations, max_completion_length=12)
    trainer = GRPOTrainer(config)
    policy, reference = ToyPolicy(0), ToyPolicy(1)
    trainer.model = policy
    trainer.reference = ReferenceModel("separate", policy, model=reference)
    advantages = rng.normal(0, 1, n)
    noise = {i: rng.normal(0, 0.3, 64) for i in range(n)}  # old policy = policy + noise (clips some tokens)

    def arrays_for(ro, rows):
        mask = ro.mask[:, 1:].astype(np.float64)
        now = ref_token_logprobs(policy, ro.ids)
        old = (now + np.stack([noise[i][: now.shape[1]] for i in rows])) * mask
        return {"advantages": advantages[rows].astype(np.float32), "old_logprobs": old.astype(np.float32),
                "ref_logprobs": trainer.reference_logprobs(ro.ids, ro.mask)}

    parts = [7, 5, 6]
    micro = accumulate(trainer, policy, rollout_batches(seqs, group, parts, arrays_for, weights))
    big = accumulate(trainer, policy, rollout_batches(seqs, group, [n], arrays_for, weights))

    real = np.nonzero(weights)[0]
    ids, mask = padded(real, *seqs, WIDTH)
    logp = ref_token_logprobs(policy, ids)
    old = logp + np.stack([noise[i][: WIDTH - 1] for i in real]) if num_iterations > 1 else logp
    expected = {}
    for name, ps in (("micro", [7, 5, 6 - group]), ("big", [n - group])):
        expected[name] = grpo_reference(logp, old, ref_token_logprobs(reference, ids), advantages[real],
                                        mask[:, 1:], loss_type=loss_type, eps=0.2, eps_high=0.28, beta=0.04,
                                        max_len=12, parts=ps)
    for name, (loss, metrics) in (("micro", micro), ("big", big)):
        want_loss, want_metrics = expected[name]
        np.testing.assert_allclose(loss, want_loss, rtol=RTOL, atol=ATOL, err_msg=name)
        assert set(metrics) == {"kl", "clip_fraction"}
        for key, value in want_metrics.items():
            np.testing.assert_allclose(metrics[key], value, rtol=RTOL, atol=ATOL, err_msg=f"{name} {key}")
    if num_iterations > 1:
        assert 0 < micro[1]["clip_fraction"] < 1  # the test does exercise clipping
    if loss_type != "bnpo":
        np.testing.assert_allclose(micro[0], big[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("offset", [0.0, 100.0, 1e4, 1e6])
@pytest.mark.parametrize("scale_rewards", ["batch", "group", "none"])
def test_grpo_advantages_keep_their_precision_with_a_large_reward_offset(offset, scale_rewards, tmp_path):
    from lazarus.rewards import Scores
    from lazarus_trainers.grpo import GRPOConfig, GRPOTrainer

    rng = np.random.default_rng(3)
    group, prompts_n = 4, 8
    n = group * prompts_n
    ro = make_rollout(*random_sequences(rng, prompts_n, group), group)
    rewards = offset + 0.05 * rng.normal(0, 1, n)  # e.g. 100 ± 0.05: a plugin may return any offset
    weights = np.ones(n, dtype=np.float32)
    weights[-group:] = 0
    trainer = GRPOTrainer(GRPOConfig(model="toy", data="toy", output=str(tmp_path), beta=0.0,
                                     scale_rewards=scale_rewards))
    got = trainer.score_rollout(ro, Scores(total=list(rewards), by_reward={}), weights)[0]["advantages"]

    grouped = rewards.reshape(-1, group)
    centred = grouped - grouped.mean(1, keepdims=True)
    if scale_rewards == "batch":  # the std of the real rows (all ranks), unbiased, as TRL's rewards.std()
        expected = centred / (rewards[weights > 0].std(ddof=1) + 1e-4)
    elif scale_rewards == "group":
        expected = centred / (grouped.std(1, ddof=1, keepdims=True) + 1e-4)
    else:
        expected = centred
    expected = expected.reshape(-1)
    real = weights > 0
    np.testing.assert_allclose(got[real], expected[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("offset", [0.0, 100.0, 1e4])
def test_grpo_logged_reward_mean_and_std_are_trls_over_the_window(offset, tmp_path):
    """``reward_mean`` / ``reward_std``: mean and unbiased std of every real reward of the logging
    window (TRL's ``reward`` / ``reward_std``), precise for rewards with a large offset."""
    from lazarus.rewards import Scores
    from lazarus_trainers.grpo import GRPOConfig, GRPOTrainer, RolloutBatch, _new_window

    rng = np.random.default_rng(29)
    trainer = GRPOTrainer(GRPOConfig(model="toy", data="toy", output=str(tmp_path)))
    trainer.rewards, trainer._window = [], _new_window()
    seen = []
    for _ in range(3):  # three steps in one logging window
        ro = make_rollout(*random_sequences(rng, 4, 4), 4)
        rewards = offset + 0.05 * rng.normal(0, 1, 16)
        weights = np.ones(16, dtype=np.float32)
        weights[-4:] = 0
        trainer._account_rewards(RolloutBatch(ro, {}, weights, (), Scores(total=list(rewards), by_reward={})))
        seen.extend(rewards[:12])
    row = trainer.extra_metrics()
    np.testing.assert_allclose(row["reward_mean"], np.mean(seen), rtol=1e-12)
    np.testing.assert_allclose(row["reward_std"], np.std(seen, ddof=1), rtol=1e-6)


# -- PPO -------------------------------------------------------------------------------------------------
def masked_whiten_reference(values, mask, shift_mean=True):
    """TRL's masked_whiten (float64): unbiased variance, rsqrt(var + 1e-8)."""
    m = mask.astype(bool)
    mean = values[m].mean()
    var = ((values[m] - mean) ** 2).sum() / (m.sum() - 1)
    out = (values - mean) / np.sqrt(var + 1e-8)
    return np.where(m, out + (0 if shift_mean else mean), 0.0)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whitening_is_trls_masked_whiten(shift_mean):
    from lazarus.training import rl

    rng = np.random.default_rng(5)
    values = (3.0 + rng.normal(0, 2, (3, 9))).astype(np.float32)
    mask = np.zeros((3, 9))
    mask[0, 2:8], mask[1, 0:3], mask[2, 4:9] = 1, 1, 1  # 14 tokens, uneven rows
    got = rl.whiten(values, mask, shift_mean=shift_mean)
    np.testing.assert_allclose(got, masked_whiten_reference(values.astype(np.float64), mask, shift_mean),
                               rtol=1e-6, atol=1e-6)
    one = np.zeros((3, 9))
    one[1, 4] = 1
    assert not rl.whiten(values, one).any()  # a single token: variance undefined, whitened to 0


def gae_reference(rewards, values, mask, gamma, lam):
    """Textbook GAE over each row's completion positions; V after the last one is 0."""
    adv = np.zeros_like(rewards)
    for b in range(len(rewards)):
        steps = np.nonzero(mask[b])[0]
        running, next_value = 0.0, 0.0
        for t in steps[::-1]:
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            running = delta + gamma * lam * running
            adv[b, t], next_value = running, values[b, t]
    return adv, (adv + values) * mask


def ppo_trainer(tmp_path, **overrides):
    from lazarus.training.reference import ReferenceModel
    from lazarus_trainers.ppo import PPOConfig, PPOTrainer

    settings = dict(model="toy", data="toy", output=str(tmp_path), beta=0.05, gamma=0.9, lam=0.8, epsilon=0.2,
                    epsilon_high=0.25, value_clip=0.15, value_coef=0.3, entropy_coef=0.01)
    settings.update(overrides)
    trainer = PPOTrainer(PPOConfig(**settings))
    policy = ToyPolicy(0)
    trainer.model = policy
    trainer.reference = ReferenceModel("separate", policy, model=ToyPolicy(1))
    return trainer, policy


def test_ppo_rollout_scoring_equals_the_reference(tmp_path):
    """Rewards (score at each completion's last token, -β·(logp - ref) per token), textbook GAE,
    whitening over the real tokens of the rollout batch, and the logged return / kl / value_mean."""
    from lazarus.rewards import Scores

    rng = np.random.default_rng(11)
    trainer, policy = ppo_trainer(tmp_path)
    prompts, completions = random_sequences(rng, 7, 1)
    ro = make_rollout(prompts, completions, 1)
    weights = np.ones(7, dtype=np.float32)
    weights[-1] = 0
    scores = rng.normal(5.0, 2.0, 7)
    got, metrics = trainer.score_rollout(ro, Scores(total=list(scores), by_reward={}), weights)

    ids = ro.ids.astype(np.int64)
    mask = ro.mask[:, 1:].astype(np.float64)
    logp = ref_token_logprobs(policy, ids) * mask
    ref = ref_token_logprobs(trainer.reference.model, ids) * mask
    values = ref_values(policy, ids) * mask
    kl = (logp - ref) * mask
    rewards = -0.05 * kl
    for b in range(7):
        rewards[b, np.nonzero(mask[b])[0][-1]] += scores[b]
    adv, returns = gae_reference(rewards, values, mask, 0.9, 0.8)
    adv = masked_whiten_reference(adv, mask * weights[:, None])
    np.testing.assert_allclose(got["advantages"], adv, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["returns"], returns, rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(got["old_logprobs"], logp, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["old_values"], values, rtol=RTOL, atol=ATOL)
    real = weights > 0
    np.testing.assert_allclose(metrics["return"], rewards.sum(1)[real].sum(), rtol=RTOL)
    np.testing.assert_allclose(metrics["kl"], ((np.exp(-kl) + kl - 1) * mask).sum(1)[real].sum(), rtol=1e-4)
    np.testing.assert_allclose(metrics["value_mean"], (values.sum(1) / mask.sum(1))[real].sum(), rtol=RTOL)


def test_ppo_loss_and_metrics_equal_the_reference_over_micro_batches(tmp_path):
    trainer, policy = ppo_trainer(tmp_path)
    rng = np.random.default_rng(13)
    seqs = random_sequences(rng, 10, 1)
    n = len(seqs[0])
    weights = np.ones(n)
    weights[3] = 0
    per_row = {i: rng.normal(0, 1, (4, 64)) for i in range(n)}  # advantages, returns, noise on logp, values

    def arrays_for(ro, rows):
        mask = ro.mask[:, 1:].astype(np.float64)
        width = mask.shape[1]
        table = np.stack([per_row[i][:, :width] for i in rows])  # (B, 4, T')
        logp, values = ref_token_logprobs(policy, ro.ids), ref_values(policy, ro.ids)
        return {"advantages": (table[:, 0] * mask).astype(np.float32),
                "returns": (table[:, 1] * mask).astype(np.float32),
                "old_logprobs": ((logp + 0.3 * table[:, 2]) * mask).astype(np.float32),
                "old_values": ((values + 0.3 * table[:, 3]) * mask).astype(np.float32)}

    micro = accumulate(trainer, policy, rollout_batches(seqs, 1, [4, 3, 3], arrays_for, weights))
    big = accumulate(trainer, policy, rollout_batches(seqs, 1, [n], arrays_for, weights))

    real = np.nonzero(weights)[0]
    ids, mask = padded(real, *seqs, WIDTH)
    mask = mask[:, 1:]
    table = np.stack([per_row[i][:, : WIDTH - 1] for i in real])
    adv, returns = table[:, 0], table[:, 1]
    logp, values = ref_token_logprobs(policy, ids), ref_values(policy, ids)
    old, old_values = logp + 0.3 * table[:, 2], values + 0.3 * table[:, 3]
    ratio = np.exp(logp - old)
    unclipped, clipped = -adv * ratio, -adv * np.clip(ratio, 0.8, 1.25)
    policy_loss = np.maximum(unclipped, clipped)
    values_clipped = old_values + np.clip(values - old_values, -0.15, 0.15)
    value_loss = 0.5 * np.maximum((values - returns) ** 2, (values_clipped - returns) ** 2)
    entropy = ref_entropy(policy, ids)
    per_token = policy_loss + 0.3 * value_loss - 0.01 * entropy
    tokens = mask.sum()
    expected = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy,
                "clip_fraction": (clipped > unclipped).astype(float),  # where the clip binds (TRL)
                "approx_kl": 0.5 * (logp - old) ** 2}
    for name, (loss, metrics) in (("micro", micro), ("big", big)):
        np.testing.assert_allclose(loss, (per_token * mask).sum() / tokens, rtol=RTOL, atol=ATOL, err_msg=name)
        assert set(metrics) == set(expected)
        for key, value in expected.items():
            np.testing.assert_allclose(metrics[key], (value * mask).sum() / tokens, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{name} {key}")
    assert 0 < micro[1]["clip_fraction"] < 1


# -- preference pairs (dpo, orpo) ----------------------------------------------------------------------------
def random_pairs(rng, n):
    """``n`` (prompt, chosen, rejected) token lists of uneven lengths."""
    return [(list(rng.integers(0, VOCAB, rng.integers(1, 6))), list(rng.integers(0, VOCAB, rng.integers(1, 10))),
             list(rng.integers(0, VOCAB, rng.integers(1, 10)))) for _ in range(n)]


def preference_batch(pairs, indices, width=None):
    """A PreferenceBatch as the data layer makes it (filler rows: index -1, empty masks)."""
    from lazarus.data.batching import PreferenceBatch

    width = width or max(len(p) + max(len(c), len(r)) for p, c, r in pairs)
    arrays = {}
    for side, k in (("chosen", 1), ("rejected", 2)):
        ids = np.zeros((len(pairs), width), dtype=np.int32)
        mask = np.zeros((len(pairs), width), dtype=np.float32)
        for i, pair in enumerate(pairs):
            prompt, answer = pair[0], pair[k]
            ids[i, :len(prompt) + len(answer)] = prompt + answer
            if indices[i] >= 0:
                mask[i, len(prompt):len(prompt) + len(answer)] = 1
        arrays[f"{side}_ids"], arrays[f"{side}_mask"] = ids, mask
        arrays[f"{side}_lengths"] = mask.sum(1).astype(np.int64)
    return PreferenceBatch(indices=np.asarray(indices), **arrays)


def answer_logps(model, pairs, side):
    """float64 (sum, token count) of each pair's answer under ``model``."""
    k = 1 if side == "chosen" else 2
    sums, counts = [], []
    for pair in pairs:
        ids = np.array([pair[0] + pair[k]])
        logp = ref_token_logprobs(model, ids)[0]
        sums.append(logp[len(pair[0]) - 1:].sum())
        counts.append(len(pair[k]))
    return np.array(sums), np.array(counts, dtype=float)


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def micro_and_big(pairs, parts, filler_at):
    """The pairs cut into micro-batches (one with a filler row), and as one big batch."""
    batches, start = [], 0
    for size in parts:
        chunk = pairs[start:start + size]
        indices = list(range(start, start + size))
        if filler_at == len(batches):
            chunk, indices = [*chunk, chunk[0]], [*indices, -1]
        batches.append(preference_batch(chunk, indices))
        start += size
    return batches, [preference_batch(pairs, list(range(len(pairs))))]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust"])
def test_dpo_losses_and_metrics_equal_the_reference(loss_type, tmp_path):
    """Losses as TRL (sigmoid with ε: conservative DPO, as TRL ≤ 0.19); rewards/* = β × the
    summed log-ratio for every loss type, ipo included (TRL 1.16)."""
    from lazarus.training.reference import ReferenceModel
    from lazarus_trainers.dpo import DPOConfig, DPOTrainer

    beta, eps = 0.3, 0.1 if loss_type in ("sigmoid", "robust") else 0.0
    trainer = DPOTrainer(DPOConfig(model="toy", data="toy", output=str(tmp_path), beta=beta, loss_type=loss_type,
                                   label_smoothing=eps))
    policy, reference = ToyPolicy(0), ToyPolicy(1)
    trainer.reference = ReferenceModel("separate", policy, model=reference)
    trainer.ref_tables = None
    pairs = random_pairs(np.random.default_rng(17), 9)
    micro_batches, big_batch = micro_and_big(pairs, [4, 2, 3], filler_at=1)
    micro = accumulate(trainer, policy, micro_batches)
    big = accumulate(trainer, policy, big_batch)

    (pc, nc), (pr, nr) = answer_logps(policy, pairs, "chosen"), answer_logps(policy, pairs, "rejected")
    (rc, _), (rr, _) = answer_logps(reference, pairs, "chosen"), answer_logps(reference, pairs, "rejected")
    if loss_type == "ipo":  # its loss on per-token averages (TRL)
        h = (pc / nc - rc / nc) - (pr / nr - rr / nr)
    else:
        h = (pc - rc) - (pr - rr)
    losses = {"sigmoid": -(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h),
              "robust": ((1 - eps) * -log_sigmoid(beta * h) + eps * log_sigmoid(-beta * h)) / (1 - 2 * eps),
              "hinge": np.maximum(0, 1 - beta * h),
              "ipo": (h - 1 / (2 * beta)) ** 2}[loss_type]
    chosen_rewards, rejected_rewards = beta * (pc - rc), beta * (pr - rr)
    expected = {"rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
                "rewards/margin": chosen_rewards - rejected_rewards,
                "rewards/accuracy": (chosen_rewards > rejected_rewards).astype(float),
                "logps/chosen": pc, "logps/rejected": pr}
    for name, (loss, metrics) in (("micro", micro), ("big", big)):
        np.testing.assert_allclose(loss, losses.mean(), rtol=RTOL, atol=ATOL, err_msg=name)
        assert set(metrics) == set(expected)
        for key, value in expected.items():
            np.testing.assert_allclose(metrics[key], value.mean(), rtol=RTOL, atol=1e-5, err_msg=f"{name} {key}")


@pytest.mark.parametrize("mean_logp", [-1e-7, -1e-5, -1e-4, -0.01, -0.5, -0.69, -0.7, -3.0, -20.0])
def test_orpo_log_odds_are_accurate_near_p_equal_one(mean_logp):
    from lazarus_trainers.orpo import log_odds

    x = np.float32(mean_logp)  # the float32 input the loss gets
    x64 = np.float64(x)
    expected = x64 - np.log(-np.expm1(x64))
    got = float(log_odds(mx.array(np.array([x]))).item())
    # relative precision, except where the log-odds cross 0 (p near ½) and float32 rounding of the
    # two terms (~0.69 each) is what is left: a few ulp of 0.69
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=2e-7)


def test_orpo_log_odds_gradient_is_finite_at_the_extremes():
    from lazarus_trainers.orpo import log_odds

    grad = mx.grad(lambda x: log_odds(x).sum())(mx.array([0.0, -1e-7, -0.6931, -0.7, -50.0]))
    assert bool(mx.all(mx.isfinite(grad)).item())


def orpo_reference(policy, pairs, lam):
    """The ORPO loss (paper): the chosen answers' token-mean NLL − λ · mean log σ(log-odds
    difference) of the per-token-averaged log-probs; and its logged metrics (TRL's names)."""
    (pc, nc), (pr, nr) = answer_logps(policy, pairs, "chosen"), answer_logps(policy, pairs, "rejected")
    mc, mr = pc / nc, pr / nr
    difference = (mc - np.log(-np.expm1(mc))) - (mr - np.log(-np.expm1(mr)))
    ratio = log_sigmoid(difference)
    nll = -pc.sum() / nc.sum()
    metrics = {"rewards/chosen": lam * mc.mean(), "rewards/rejected": lam * mr.mean(),
               "rewards/margin": lam * (mc - mr).mean(), "rewards/accuracy": (mc > mr).mean(),
               "logps/chosen": mc.mean(), "logps/rejected": mr.mean(), "nll_loss": nll,
               "log_odds_ratio": ratio.mean(), "log_odds_chosen": difference.mean()}
    return nll - lam * ratio.mean(), metrics


def test_orpo_loss_and_metrics_equal_the_reference_over_micro_batches(tmp_path):
    """The NLL term is the token mean over every chosen answer token of the step, so three
    micro-batches (one with a filler row) give what one batch gives."""
    from lazarus_trainers.orpo import ORPOConfig, ORPOTrainer

    lam = 0.4
    pairs = random_pairs(np.random.default_rng(19), 9)
    micro_batches, big_batch = micro_and_big(pairs, [4, 2, 3], filler_at=2)
    policy = ToyPolicy(0)
    want_loss, want_metrics = orpo_reference(policy, pairs, lam)
    for name, batches in (("micro", micro_batches), ("big", big_batch)):
        trainer = ORPOTrainer(ORPOConfig(model="toy", data="toy", output=str(tmp_path), beta=lam,
                                         grad_accumulation=len(batches)))
        source = iter(batches)
        step = [trainer.next_batch(source, 0, m) for m in range(len(batches))]  # what the train loop does
        loss, metrics = accumulate(trainer, policy, step)
        np.testing.assert_allclose(loss, want_loss, rtol=RTOL, atol=ATOL, err_msg=name)
        assert set(metrics) == set(want_metrics)
        for key, value in want_metrics.items():
            np.testing.assert_allclose(metrics[key], value, rtol=RTOL, atol=1e-5, err_msg=f"{name} {key}")


def test_orpo_evaluation_batch_uses_its_own_token_mean(tmp_path):
    from lazarus_trainers.orpo import ORPOConfig, ORPOTrainer

    pairs = random_pairs(np.random.default_rng(23), 5)
    policy = ToyPolicy(2)
    trainer = ORPOTrainer(ORPOConfig(model="toy", data="toy", output=str(tmp_path), beta=0.2))
    loss, metrics = accumulate(trainer, policy, [preference_batch(pairs, list(range(5)))], training=False)
    want_loss, want_metrics = orpo_reference(policy, pairs, 0.2)
    np.testing.assert_allclose(loss, want_loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(metrics["nll_loss"], want_metrics["nll_loss"], rtol=RTOL)
