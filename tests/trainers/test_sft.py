"""The sft trainer on a tiny random llama and a small math set: the loss falls, prompt tokens carry no
loss, resume equals a straight run, and the adapter loads in mlx-lm."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.trainers.conftest import quiet_console, sft_config


@pytest.fixture(scope="module")
def trained(tiny_llama, math_sft_data, tmp_path_factory):
    """One 30-step LoRA run with an eval at the start and the end."""
    from lazarus_trainers.sft import SFTTrainer

    output = tmp_path_factory.mktemp("sft") / "out"
    config = sft_config(tiny_llama, math_sft_data, output, max_steps=30, eval_batches=-1, log_interval=5)
    result = SFTTrainer(config, console=quiet_console()).train()
    return result


def test_loss_falls_by_a_clear_margin(trained):
    assert trained.step == 30 and not trained.interrupted
    # random init: ~6+ nats/token; 30 LoRA steps on arithmetic text learn its shape
    assert trained.last_eval_loss < trained.first_eval_loss - 1.0, (trained.first_eval_loss, trained.last_eval_loss)
    rows = [json.loads(line) for line in (trained.output / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20, 25, 30]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert all(r["tokens_per_second"] > 0 and r["learning_rate"] == pytest.approx(2e-3) for r in train_rows)
    assert [r["step"] for r in rows if r["split"] == "eval"] == [0, 30]
    assert (trained.output / "loss.png").read_bytes()[:4] == b"\x89PNG"
    config = json.loads((trained.output / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora" and config["lora_parameters"]["rank"] == 4
    provenance = json.loads((trained.output / "lazarus.json").read_text())
    assert provenance["trainer"] == "sft" and provenance["step"] == 30
    assert set(provenance["data_sha256"]) == {"train.jsonl", "valid.jsonl"}


def test_prompt_tokens_carry_no_loss(tiny_llama, math_sft_data, tmp_path):
    import mlx.core as mx

    from lazarus.data.records import load_splits
    from lazarus_trainers.sft import SFTTrainer, masked_cross_entropy

    trainer = SFTTrainer(sft_config(tiny_llama, math_sft_data, tmp_path / "o", batch_size=8),
                         console=quiet_console())
    trainer.load()
    trainer.load_data()
    batch = next(iter(trainer.train_batches))
    arrays = trainer.batch_arrays(batch)
    ids, mask = arrays["ids"], arrays["loss_mask"]
    total, count = trainer.loss(trainer.model, ids, mask)

    # the tokens that carry loss are exactly the completions (+ EOS), counted from the records
    records = load_splits(math_sft_data).train.records
    tokenizer = trainer.tokenizer
    examples = [trainer.train_examples[int(i)] for i in batch.indices]
    completions = [records[e.record_index].completion for e in examples]
    assert count.item() == sum(len(tokenizer.encode(c, add_special_tokens=False)) + 1 for c in completions)

    # the loss is the mean next-token cross-entropy over completion positions, computed here by hand
    logits = np.array(trainer.model(ids[:, :-1]).astype(mx.float32))
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    by_hand = []
    for row, example in enumerate(examples):
        for t in range(example.prompt_length, example.length):  # targets t, predicted at position t-1
            by_hand.append(-log_probs[row, t - 1, int(example.ids[t])])
    assert total.item() / count.item() == pytest.approx(float(np.mean(by_hand)), rel=1e-4)

    # changing the targets of prompt positions leaves the loss unchanged; changing a completion
    # target does not
    targets = np.array(ids[:, 1:])
    target_mask = np.array(mask[:, 1:])
    rng = np.random.default_rng(0)
    scrambled = np.where(target_mask == 0, rng.integers(0, tokenizer.vocab_size, targets.shape), targets)
    logits_mx = mx.array(logits)
    same = masked_cross_entropy(logits_mx, mx.array(scrambled.astype(np.int32)), mask[:, 1:])[0]
    assert same.item() == pytest.approx(total.item(), rel=1e-6)
    row, col = map(int, np.argwhere(target_mask == 1)[0])
    changed = targets.copy()
    changed[row, col] = (changed[row, col] + 1) % tokenizer.vocab_size
    assert masked_cross_entropy(logits_mx, mx.array(changed), mask[:, 1:])[0].item() != pytest.approx(
        total.item(), rel=1e-6)

    # with --no-mask-prompt the prompt counts too
    unmasked = SFTTrainer(sft_config(tiny_llama, math_sft_data, tmp_path / "u", batch_size=8, mask_prompt=False),
                          console=quiet_console())
    unmasked.model, unmasked.tokenizer = trainer.model, trainer.tokenizer
    unmasked.load_data()
    batch = next(iter(unmasked.train_batches))
    _, all_count = unmasked.loss(trainer.model, **unmasked.batch_arrays(batch))
    real = batch.lengths[batch.indices >= 0]
    assert all_count.item() == int((real - 1).sum())


@pytest.mark.slow
def test_resume_equals_straight_run(tiny_llama, math_sft_data, tmp_path):
    """8 straight steps == 3 steps, then --resume from that checkpoint to 8 (dropout, accumulation,
    warmup + cosine, so model, optimizer, schedule, data position and RNG all have to come back)."""
    import mlx.core as mx

    from lazarus.training import checkpoint as ckpt
    from lazarus_trainers.sft import SFTTrainer

    settings = dict(max_steps=8, dropout=0.2, grad_accumulation=2, lr_schedule="cosine", warmup_steps=2,
                    save_interval=3, keep_checkpoints=0, eval_interval=4)
    straight = SFTTrainer(sft_config(tiny_llama, math_sft_data, tmp_path / "straight", **settings),
                          console=quiet_console()).train()
    assert sorted(p.name for p in (straight.output / "checkpoints").glob("step-*")) == [
        "step-00000003", "step-00000006", "step-00000008"]

    resumed_config = sft_config(tiny_llama, math_sft_data, tmp_path / "resumed", **settings,
                                resume=str(straight.output / "checkpoints" / "step-00000003"))
    resumed = SFTTrainer(resumed_config, console=quiet_console()).train()
    assert resumed.step == 8

    a = mx.load(str(straight.output / "adapters.safetensors"))
    b = mx.load(str(resumed.output / "adapters.safetensors"))
    assert set(a) == set(b)
    start = mx.load(str(straight.output / "checkpoints" / "step-00000003" / "adapters.safetensors"))
    assert max(float(mx.abs(a[k] - start[k]).max()) for k in a) > 1e-3  # training moved on after step 3
    for key in a:
        np.testing.assert_allclose(np.array(a[key]), np.array(b[key]), atol=1e-6, err_msg=key)

    opt_a = ckpt.read_optimizer_state(straight.output / "checkpoints" / "step-00000008")
    opt_b = ckpt.read_optimizer_state(resumed.output / "checkpoints" / "step-00000008")
    assert set(opt_a) == set(opt_b) and opt_a["step"].item() == 8
    for key in opt_a:
        np.testing.assert_allclose(np.array(opt_a[key].astype(mx.float32)), np.array(opt_b[key].astype(mx.float32)),
                                   atol=1e-6, err_msg=key)
    state_a = ckpt.read_state(straight.output / "checkpoints" / "step-00000008")
    state_b = ckpt.read_state(resumed.output / "checkpoints" / "step-00000008")
    assert state_a["data_position"] == state_b["data_position"] and state_a["rng"] == state_b["rng"]

    train_rows = lambda out: [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()  # noqa: E731
                              if json.loads(x)["split"] == "train"]
    assert [r["loss"] for r in train_rows(resumed.output)] == pytest.approx(
        [r["loss"] for r in train_rows(straight.output)][3:], rel=1e-5)


def test_adapter_loads_in_mlx_lm(trained, tiny_llama):
    import mlx.core as mx
    from mlx_lm import load as mlx_lm_load

    import lazarus

    ids = mx.array([[1, 45, 99, 250, 7, 300, 12]])
    reference, _ = mlx_lm_load(str(tiny_llama), adapter_path=str(trained.output))
    ours, _, _ = lazarus.load_model(str(tiny_llama), adapter_path=str(trained.output))
    base, _, _ = lazarus.load_model(str(tiny_llama))
    expected = reference(ids)
    np.testing.assert_allclose(np.array(ours(ids)), np.array(expected), atol=1e-4)
    assert float(mx.abs(base(ids) - expected).max()) > 1e-2  # the adapter changes the model


def test_full_fine_tune_writes_hf_layout_and_resumes(tiny_llama, math_sft_data, tmp_path):
    import mlx.core as mx

    import lazarus
    from lazarus_trainers.sft import SFTTrainer

    settings = dict(fine_tune_type="full", num_layers=1, max_steps=4, save_interval=2, keep_checkpoints=0,
                    learning_rate=1e-3)
    straight = SFTTrainer(sft_config(tiny_llama, math_sft_data, tmp_path / "full", **settings),
                          console=quiet_console()).train()
    assert (straight.output / "config.json").is_file() and (straight.output / "model.safetensors").is_file()
    assert (straight.output / "tokenizer.json").is_file()
    model, _, _ = lazarus.load_model(str(straight.output))
    resumed = SFTTrainer(sft_config(tiny_llama, math_sft_data, tmp_path / "full2", **settings,
                                    resume=str(straight.output / "checkpoints" / "step-00000002")),
                         console=quiet_console()).train()
    again, _, _ = lazarus.load_model(str(resumed.output))
    ids = mx.array([[1, 5, 9, 200]])
    np.testing.assert_allclose(np.array(model(ids)), np.array(again(ids)), atol=1e-5)


def test_default_num_layers_on_a_smaller_model_adapts_every_block(tiny_llama, math_sft_data, tmp_path):
    """--num-layers defaults to 16 (as in mlx-lm); a 2-block model trains both blocks instead of failing."""
    from lazarus_trainers.sft import SFTTrainer

    config = sft_config(tiny_llama, math_sft_data, tmp_path / "out", max_steps=1, num_layers=None)
    result = SFTTrainer(config, console=quiet_console()).train()
    saved = json.loads((result.output / "adapter_config.json").read_text())
    assert saved["num_layers"] == 2
