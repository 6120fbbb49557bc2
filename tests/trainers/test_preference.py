"""dpo, orpo and dual-reward on a tiny random llama: the losses against hand-computed values, the
reference really is the adapter-off (or starting-adapter) model, precomputed reference log-probs
equal live ones, short runs learn, resume equals a straight run, and adapters load in mlx-lm."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.trainers.conftest import quiet_console


@pytest.fixture(scope="session")
def math_dirs(tmp_path_factory):
    """The math generator's output: sft/, preference/, prompts/ (the splits users get)."""
    from lazarus.data.math import generate, write_math_data

    root = tmp_path_factory.mktemp("math-all")
    write_math_data(generate(200, seed=1), root, valid_fraction=0.1, test_fraction=0.1)
    return root


@pytest.fixture(scope="session")
def few_pairs(math_dirs, tmp_path_factory):
    """8 training pairs (and 4 validation pairs) from the math generator's preference split."""
    root = tmp_path_factory.mktemp("pairs")
    lines = (math_dirs / "preference" / "train.jsonl").read_text().splitlines()
    (root / "train.jsonl").write_text("\n".join(lines[:8]) + "\n")
    (root / "valid.jsonl").write_text("\n".join(lines[8:12]) + "\n")
    return root


def dpo_config(model, data, output, **overrides):
    from lazarus_trainers.dpo import DPOConfig

    settings = dict(model=str(model), data=str(data), output=str(output), num_layers=-1, rank=4,
                    learning_rate=1e-3, batch_size=4, max_steps=4, eval_interval=0, eval_batches=2,
                    save_interval=0, log_interval=1, max_seq_length=96)
    settings.update(overrides)
    return DPOConfig(**settings)


def ready(trainer_cls, config):
    """A trainer with model, adapter, data and reference ready (what train() does before step 1)."""
    trainer = trainer_cls(config, console=quiet_console())
    trainer.load()
    trainer.load_data()
    trainer.setup()
    return trainer


def rows(output, split="train"):
    return [r for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


# -- the losses ----------------------------------------------------------------------------------------
def test_dpo_at_step_zero_is_ln2_with_zero_margin(tiny_llama, few_pairs, tmp_path):
    from lazarus_trainers.dpo import DPOTrainer

    trainer = ready(DPOTrainer, dpo_config(tiny_llama, few_pairs, tmp_path / "o"))
    batch = next(iter(trainer.train_batches))
    total, count, metrics = trainer.loss(trainer.model, **trainer.batch_arrays(batch))
    assert count.item() == 4
    assert abs(total.item() / count.item() - math.log(2)) < 1e-5
    assert metrics["rewards/margin"].item() == 0.0
    assert metrics["rewards/accuracy"].item() == 0.0  # no pair is preferred yet


def _sigmoid_nll(x):
    return math.log1p(math.exp(-x))


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust"])
def test_each_dpo_loss_matches_a_hand_computed_value(loss_type):
    import mlx.core as mx

    from lazarus_trainers.dpo import preference_losses

    # two pairs: policy/reference log-probs of chosen and rejected answers
    pc, pr, rc, rr = [-3.0, -7.5], [-4.0, -6.0], [-3.5, -7.0], [-3.8, -6.5]
    beta, eps = 0.5, 0.1
    expected = []
    for i in range(2):
        h = (pc[i] - rc[i]) - (pr[i] - rr[i])  # 0.7 and -1.0
        expected.append({
            "sigmoid": (1 - eps) * _sigmoid_nll(beta * h) + eps * _sigmoid_nll(-beta * h),
            "robust": ((1 - eps) * _sigmoid_nll(beta * h) - eps * _sigmoid_nll(-beta * h)) / (1 - 2 * eps),
            "hinge": max(0.0, 1 - beta * h),
            "ipo": (h - 1 / (2 * beta)) ** 2,
        }[loss_type])
    got = preference_losses(mx.array(pc), mx.array(pr), mx.array(rc), mx.array(rr), beta=beta,
                            loss_type=loss_type, label_smoothing=eps)
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-5)


def test_orpo_odds_ratio_term_matches_a_hand_computed_value():
    import mlx.core as mx

    from lazarus_trainers.orpo import odds_ratio_terms

    chosen, rejected = [-0.4, -1.2], [-0.9, -0.7]  # mean log-probs per answer token
    expected = []
    for c, r in zip(chosen, rejected, strict=True):
        odds = lambda lp: math.log(math.exp(lp) / (1 - math.exp(lp)))  # noqa: E731
        expected.append(-_sigmoid_nll(odds(c) - odds(r)))  # log sigmoid
    got, _ = odds_ratio_terms(mx.array(chosen), mx.array(rejected))
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-5)
    # the whole loss (NLL as a token mean) is checked in tests/trainers/test_loss_references.py


# -- the reference model ---------------------------------------------------------------------------------
def _logps(model, trainer, batch):
    from lazarus.training.reference import sequence_logprobs

    ids, mask, _ = trainer.stacked(batch)
    return np.array(sequence_logprobs(model, ids, mask)[0])


def _perturb_adapter(model, seed=3):
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    mx.random.seed(seed)
    weights = [(k, v + 0.05 * mx.random.normal(v.shape)) for k, v in tree_flatten(model.trainable_parameters())]
    model.update(tree_unflatten(weights))


def test_reference_is_the_adapter_off_model(tiny_llama, few_pairs, tmp_path):
    import lazarus
    from lazarus_trainers.dpo import DPOTrainer

    trainer = ready(DPOTrainer, dpo_config(tiny_llama, few_pairs, tmp_path / "o"))
    assert trainer.reference.kind == "adapter-off"
    batch = next(iter(trainer.train_batches))
    before = np.array(trainer.batch_arrays(batch)["ref_chosen"])
    _perturb_adapter(trainer.model)
    assert np.abs(_logps(trainer.model, trainer, batch)[:4] - before).max() > 1e-2  # the policy moved
    np.testing.assert_array_equal(np.array(trainer.batch_arrays(batch)["ref_chosen"]), before)  # the reference did not
    base, _, _ = lazarus.load_model(str(tiny_llama))
    np.testing.assert_allclose(_logps(base, trainer, batch)[:4], before, atol=1e-4)


def test_with_a_starting_adapter_the_reference_is_that_adapter(tiny_llama, few_pairs, tmp_path):
    import lazarus
    from lazarus.adapters import AdapterConfig, LoraParameters, apply_adapter, save_adapter
    from lazarus_trainers.dpo import DPOTrainer

    sft, _, _ = lazarus.load_model(str(tiny_llama))
    config = AdapterConfig(fine_tune_type="lora", num_layers=2, lora_parameters=LoraParameters(rank=4))
    apply_adapter(sft, config)
    _perturb_adapter(sft)
    save_adapter(sft, tmp_path / "sft", config)

    trainer = ready(DPOTrainer, dpo_config(tiny_llama, few_pairs, tmp_path / "o", adapter=str(tmp_path / "sft")))
    assert trainer.reference.kind == "start-adapter"
    batch = next(iter(trainer.train_batches))
    before = np.array(trainer.batch_arrays(batch)["ref_chosen"])
    starting, _, _ = lazarus.load_model(str(tiny_llama), adapter_path=str(tmp_path / "sft"))
    np.testing.assert_allclose(_logps(starting, trainer, batch)[:4], before, atol=1e-4)
    np.testing.assert_allclose(_logps(trainer.model, trainer, batch)[:4], before, atol=1e-4)  # training starts there
    _perturb_adapter(trainer.model, seed=4)
    np.testing.assert_array_equal(np.array(trainer.batch_arrays(batch)["ref_chosen"]), before)


@pytest.mark.slow
def test_precomputed_reference_gives_the_live_first_step(tiny_llama, few_pairs, tmp_path):
    from lazarus_trainers.dpo import REFERENCE_CACHE_DIR, DPOTrainer

    live = DPOTrainer(dpo_config(tiny_llama, few_pairs, tmp_path / "live", max_steps=2),
                      console=quiet_console()).train()
    cached = DPOTrainer(dpo_config(tiny_llama, few_pairs, tmp_path / "pre", max_steps=2, precompute_ref=True),
                        console=quiet_console()).train()
    assert [r["loss"] for r in rows(cached.output)] == pytest.approx([r["loss"] for r in rows(live.output)], abs=1e-5)
    assert len(list((tmp_path / "pre" / REFERENCE_CACHE_DIR).glob("*.safetensors"))) == 1
    # the eval rows read the cached valid log-probs too
    assert rows(cached.output, "eval")[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


# -- learning ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dpo_run(tiny_llama, few_pairs, tmp_path_factory):
    from lazarus_trainers.dpo import DPOTrainer

    output = tmp_path_factory.mktemp("dpo") / "out"
    # 8 pairs overfitted on purpose: the held-out loss rises past the divergence guard's limit, so it is off
    config = dpo_config(tiny_llama, few_pairs, output, max_steps=24, log_interval=4, eval_interval=12,
                        max_eval_loss_rise=0.0)
    return DPOTrainer(config, console=quiet_console()).train()


def test_dpo_raises_preference_accuracy_on_its_pairs(dpo_run):
    train = rows(dpo_run.output)
    assert train[0]["rewards/accuracy"] <= 0.75
    assert train[-1]["rewards/accuracy"] >= 0.95 and train[-1]["rewards/margin"] > 1.0
    assert train[-1]["loss"] < 0.3 < math.log(2)
    expected = {"loss", "learning_rate", "tokens_per_second", "rewards/chosen", "rewards/rejected",
                "rewards/margin", "rewards/accuracy", "logps/chosen", "logps/rejected"}
    assert expected <= set(train[-1])
    evals = rows(dpo_run.output, "eval")
    assert [r["step"] for r in evals] == [0, 12, 24] and expected - {"learning_rate", "tokens_per_second"} <= set(evals[-1])
    assert (dpo_run.output / "loss.png").is_file()


def test_dpo_adapter_loads_in_mlx_lm(dpo_run, tiny_llama):
    import mlx.core as mx
    from mlx_lm import load as mlx_lm_load

    import lazarus

    ids = mx.array([[1, 45, 99, 250, 7, 300, 12]])
    theirs, _ = mlx_lm_load(str(tiny_llama), adapter_path=str(dpo_run.output))
    ours, _, _ = lazarus.load_model(str(tiny_llama), adapter_path=str(dpo_run.output))
    np.testing.assert_allclose(np.array(ours(ids)), np.array(theirs(ids)), atol=1e-4)
    provenance = json.loads((dpo_run.output / "lazarus.json").read_text())
    assert provenance["trainer"] == "dpo" and provenance["training"]["loss_type"] == "sigmoid"


@pytest.mark.slow
def test_dpo_resume_equals_straight_run(tiny_llama, few_pairs, tmp_path):
    import mlx.core as mx

    from lazarus_trainers.dpo import DPOTrainer

    settings = dict(max_steps=6, save_interval=3, keep_checkpoints=0, dropout=0.1, lr_schedule="cosine")
    straight = DPOTrainer(dpo_config(tiny_llama, few_pairs, tmp_path / "a", **settings), console=quiet_console()).train()
    resumed = DPOTrainer(dpo_config(tiny_llama, few_pairs, tmp_path / "b", **settings,
                                    resume=str(straight.output / "checkpoints" / "step-00000003")),
                         console=quiet_console()).train()
    a, b = (mx.load(str(r.output / "adapters.safetensors")) for r in (straight, resumed))
    for key in a:
        np.testing.assert_allclose(np.array(a[key]), np.array(b[key]), atol=1e-6, err_msg=key)
    assert [r["loss"] for r in rows(resumed.output)] == pytest.approx([r["loss"] for r in rows(straight.output)][3:],
                                                                      rel=1e-5)


@pytest.mark.slow
def test_orpo_short_run_prefers_chosen(tiny_llama, few_pairs, tmp_path):
    from lazarus_trainers.orpo import ORPOConfig, ORPOTrainer

    config = ORPOConfig(model=str(tiny_llama), data=str(few_pairs), output=str(tmp_path / "o"), num_layers=-1,
                        rank=4, learning_rate=2e-3, batch_size=4, max_steps=24, eval_interval=0,
                        save_interval=0, log_interval=4, max_seq_length=96, beta=1.0)
    ORPOTrainer(config, console=quiet_console()).train()
    train = rows(tmp_path / "o")
    assert train[-1]["nll_loss"] < train[0]["nll_loss"] - 1.0  # the SFT part learns the chosen answers
    assert train[-1]["rewards/accuracy"] >= 0.75 and "log_odds_ratio" in train[-1]


# -- dual-reward --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def two_classes(tmp_path_factory):
    """Arithmetic questions (label add) vs colour questions (label colour), with short answers."""
    import random

    rng = random.Random(0)
    records = []
    for i in range(64):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        if i % 2:
            records.append({"prompt": f"What is {a} + {b}?", "completion": f" {a + b}", "label": "add"})
        else:
            records.append({"prompt": f"Name the colour of item {a}.", "completion": " red", "label": "colour"})
    root = tmp_path_factory.mktemp("two-classes")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:48]))
    (root / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[48:]))
    return root


def test_dual_reward_classifier_accuracy_rises_at_its_layer(tiny_llama, two_classes, tmp_path):
    from lazarus_trainers.dual_reward import DualRewardConfig, DualRewardTrainer

    config = DualRewardConfig(model=str(tiny_llama), data=str(two_classes), output=str(tmp_path / "o"),
                              num_layers=-1, rank=4, learning_rate=3e-4, batch_size=8, max_steps=20,
                              eval_interval=10, eval_batches=-1, save_interval=0, log_interval=5,
                              classifier_targets=("add=c", "colour=a"), classifier_layer=-2,
                              classifier_weight=0.5)
    trainer = DualRewardTrainer(config, console=quiet_console())
    trainer.train()
    assert trainer.hook == "blocks.0.hook_resid_post"
    evals = rows(tmp_path / "o", "eval")
    assert evals[0]["classifier/accuracy"] <= 0.5
    assert evals[-1]["classifier/accuracy"] == 1.0
    assert evals[-1]["classifier/loss"] < evals[0]["classifier/loss"] / 10
    assert evals[-1]["answer/loss"] < evals[0]["answer/loss"]


# -- from the command line ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sft_then_dpo_from_the_cli(tiny_llama, math_dirs, tmp_path):
    from click.testing import CliRunner

    from lazarus.cli import main

    runner = CliRunner()
    common = ["--model", str(tiny_llama), "--num-layers", "-1", "--rank", "4", "--batch-size", "4",
              "--max-seq-length", "96", "--eval-interval", "0", "--eval-batches", "1", "--save-interval", "0"]
    sft = runner.invoke(main, ["train", "sft", *common, "--data", str(math_dirs / "sft"), "--output",
                               str(tmp_path / "sft"), "--max-steps", "3", "--adapter", "lora"])
    assert sft.exit_code == 0, sft.output
    assert "--adapter lora is deprecated" in sft.output and "--fine-tune-type lora" in sft.output
    dpo = runner.invoke(main, ["train", "dpo", *common, "--data", str(math_dirs / "preference"), "--output",
                               str(tmp_path / "dpo"), "--max-steps", "3", "--adapter", str(tmp_path / "sft"),
                               "--loss-type", "ipo", "--beta", "0.5"])
    assert dpo.exit_code == 0, dpo.output
    assert "Reference: the starting adapter" in dpo.output
    assert (tmp_path / "dpo" / "adapters.safetensors").is_file()


def test_preference_data_errors_name_file_and_line(tiny_llama, tmp_path):
    from click.testing import CliRunner

    from lazarus.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a", "chosen": " b", "rejected": " c"}\n{"prompt": "a", "chosen": " b"}\n')
    args = ["train", "dpo", "--model", str(tiny_llama), "--data", str(data), "--output", str(tmp_path / "o")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{data}:2: missing 'rejected'" in result.output

    data.write_text('{"prompt": "a", "chosen": " b", "rejected": " b"}\n' * 3)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "'chosen' equals 'rejected'" in result.output
