"""The data layer: JSONL records, loss masks, batching (resume, sharding) and the math generator.

A real byte-level BPE tokenizer with a ChatML template is trained once per module with
``lazarus.tokenizer.train_tokenizer`` (offline, well under a second).
"""

from __future__ import annotations

import ast
import json
import operator
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lazarus.cli import main
from lazarus.data import math as math_data
from lazarus.data.batching import BatchIterator, BatchPosition, PreferenceBatch, SFTBatch
from lazarus.data.examples import (
    PreferenceExample,
    SFTExample,
    pad_id_for,
    tokenize,
    tokenize_preference,
    tokenize_prompts,
    tokenize_sft,
)
from lazarus.data.math import extract_answer
from lazarus.data.records import (
    ChatRecord,
    CompletionRecord,
    PreferenceRecord,
    PromptRecord,
    TextRecord,
    load_splits,
    read_dataset,
)
from lazarus.errors import LazarusError


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from lazarus.tokenizer import train_tokenizer

    return train_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=400)


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows),
                    encoding="utf-8")
    return path


CHAT = [{"role": "system", "content": "You add numbers."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "It is 5."},
        {"role": "user", "content": "And 4 + 4?"},
        {"role": "assistant", "content": "The answer is 8."}]


# -- records ---------------------------------------------------------------------------------------
def test_each_record_kind_is_detected_and_parsed(tmp_path):
    cases = {
        "completion": ({"prompt": "What is 1 + 1?", "completion": " 2", "id": 7}, CompletionRecord),
        "chat": ({"messages": CHAT}, ChatRecord),
        "text": ({"text": "Once upon a time."}, TextRecord),
        "preference": ({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}, PreferenceRecord),
        "prompt": ({"prompt": "What is 6 * 7?", "answer": 42, "expression": "6 * 7"}, PromptRecord),
    }
    for kind, (row, cls) in cases.items():
        dataset = read_dataset(write_jsonl(tmp_path / f"{kind}.jsonl", [row, row]))
        assert dataset.kind == kind and len(dataset) == 2
        assert isinstance(dataset[0], cls)
        assert dataset[1].source == f"{tmp_path / f'{kind}.jsonl'}:2"
    prompt = read_dataset(tmp_path / "prompt.jsonl")[0]
    assert prompt.extra == {"answer": 42, "expression": "6 * 7"} and prompt.answer == 42
    assert read_dataset(tmp_path / "chat.jsonl").format == "sft"
    assert read_dataset(tmp_path / "preference.jsonl").format == "preference"
    # a trainer asking for prompts reads a completion file as prompts and keeps the completion
    as_prompts = read_dataset(tmp_path / "completion.jsonl", format="prompt")
    assert as_prompts.kind == "prompt" and as_prompts[0].extra == {"completion": " 2", "id": 7}


def test_preference_fields_may_be_message_lists(tmp_path):
    row = {"prompt": [{"role": "user", "content": "Hi"}],
           "chosen": [{"role": "assistant", "content": "Hello!"}],
           "rejected": [{"role": "assistant", "content": "No."}]}
    record = read_dataset(write_jsonl(tmp_path / "p.jsonl", [row]))[0]
    assert record.prompt[0]["content"] == "Hi" and record.chosen[0]["content"] == "Hello!"


def test_record_that_does_not_fit_names_file_line_and_keys(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "completion": "b"},
                                                 {"prompt": "a", "answer": 3}])
    with pytest.raises(LazarusError, match=r"train\.jsonl:2: missing 'completion': expected keys \{prompt, completion\}.*"
                                           r"got \{answer, prompt\}"):
        read_dataset(path)
    only_prompts = write_jsonl(tmp_path / "rl.jsonl", [{"prompt": "a", "answer": 3}])
    with pytest.raises(LazarusError, match=r"rl\.jsonl:1: expected keys .*\{messages\}.* for sft data, "
                                           r"got \{answer, prompt\}"):
        read_dataset(only_prompts, format="sft")
    with pytest.raises(LazarusError, match=r"rl\.jsonl:1: expected keys \{prompt, chosen, rejected\}"):
        read_dataset(only_prompts, format="preference")
    bad_messages = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(LazarusError, match=r"chat\.jsonl:1: the last message must be the assistant"):
        read_dataset(bad_messages)
    wrong_type = write_jsonl(tmp_path / "t.jsonl", [{"text": 5}])
    with pytest.raises(LazarusError, match=r"t\.jsonl:1: 'text' must be a string"):
        read_dataset(wrong_type)


def test_malformed_json_names_file_and_line_blank_lines_skipped(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": "one"}, "", "   ", '{"text": "two"',
                                                 {"text": "three"}])
    with pytest.raises(LazarusError, match=r"train\.jsonl:4: invalid JSON: .*column") as info:
        read_dataset(path)
    assert "\n" not in str(info.value)
    ok = write_jsonl(tmp_path / "ok.jsonl", [{"text": "one"}, "", {"text": "two"}, ""])
    dataset = read_dataset(ok)
    assert [r.text for r in dataset] == ["one", "two"] and dataset[1].source.endswith("ok.jsonl:3")
    not_object = write_jsonl(tmp_path / "list.jsonl", ["[1, 2]"])
    with pytest.raises(LazarusError, match=r"list\.jsonl:1: expected a JSON object, got list"):
        read_dataset(not_object)


def test_malformed_jsonl_via_cli_exits_2_without_traceback(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "completion": "b"}, "{oops"])
    proc = subprocess.run([sys.executable, "-m", "lazarus.cli", "data", "info", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{path}:2: invalid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_splits_directory_single_file_and_empty_files(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)]
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    write_jsonl(tmp_path / "d" / "valid.jsonl", rows[:2])
    splits = load_splits(tmp_path / "d", format="sft")
    assert (len(splits.train), len(splits.valid), splits.test) == (5, 2, None)
    assert [name for name, _ in splits.items()] == ["train", "valid"]
    single = load_splits(tmp_path / "d" / "valid.jsonl")
    assert len(single.train) == 2 and single.valid is None
    (tmp_path / "d" / "test.jsonl").write_text("\n\n")  # an empty split is fine
    assert len(load_splits(tmp_path / "d").test) == 0
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "train.jsonl").write_text("")
    with pytest.raises(LazarusError, match=r"train\.jsonl: no records"):
        load_splits(tmp_path / "empty")
    (tmp_path / "none").mkdir()
    with pytest.raises(LazarusError, match=r"no train\.jsonl"):
        load_splits(tmp_path / "none")
    write_jsonl(tmp_path / "d" / "test.jsonl", [{"text": "x"}])
    with pytest.raises(LazarusError, match=r"test\.jsonl: holds text records"):
        load_splits(tmp_path / "d")


# -- tokenisation and masks ------------------------------------------------------------------------
def test_completion_masks_prompt_and_appends_one_eos(tmp_path, tok):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "What is 2 + 3?", "completion": " 2 + 3 = 5."}])
    example = tokenize_sft(read_dataset(path), tok)[0]
    prompt_ids = tok.encode("What is 2 + 3?")
    completion_ids = tok.encode(" 2 + 3 = 5.", add_special_tokens=False)
    assert prompt_ids[0] == tok.bos_token_id
    assert example.ids.tolist() == prompt_ids + completion_ids + [tok.eos_token_id]
    assert example.loss_mask.tolist() == [0] * len(prompt_ids) + [1] * (len(completion_ids) + 1)
    assert example.prompt_length == len(prompt_ids) and example.ids.dtype == np.int32
    unmasked = tokenize_sft(read_dataset(path), tok, mask_prompt=False)[0]
    assert unmasked.ids.tolist() == example.ids.tolist() and unmasked.loss_mask.all()
    no_eos = tokenize_sft(read_dataset(path), tok, add_eos=False)[0]
    assert no_eos.ids.tolist() == prompt_ids + completion_ids


def test_bos_is_not_doubled(tmp_path, tok):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "<s>Hello", "completion": " world"}])
    ids = tokenize_sft(read_dataset(path), tok)[0].ids.tolist()
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_chat_masks_everything_but_the_last_assistant_turn(tmp_path, tok):
    example = tokenize_sft(read_dataset(write_jsonl(tmp_path / "c.jsonl", [{"messages": CHAT}])), tok)[0]
    prompt_text = tok.apply_chat_template(CHAT[:-1], add_generation_prompt=True)
    full_text = tok.apply_chat_template(CHAT, add_generation_prompt=False)
    assert full_text.startswith(prompt_text) and prompt_text.endswith("<|im_start|>assistant\n")
    prompt_ids = tok.encode(prompt_text, add_special_tokens=False)
    completion_ids = tok.encode(full_text[len(prompt_text):], add_special_tokens=False)
    expected = prompt_ids + completion_ids + [tok.eos_token_id]
    # token by token: the ids are the rendered template; loss exactly on the last assistant turn
    assert example.ids.tolist() == expected
    for position, (token, mask) in enumerate(zip(example.ids.tolist(), example.loss_mask.tolist(), strict=True)):
        assert mask == (position >= len(prompt_ids)), (position, tok.id_to_token(token))
    # the template writes BOS itself; it is there once
    assert example.ids.tolist().count(tok.bos_token_id) == 1 and example.ids[0] == tok.bos_token_id
    learned = tok.decode(example.ids[example.loss_mask == 1], skip_special_tokens=False)
    assert learned == "The answer is 8.<|im_end|>\n</s>"
    # the earlier assistant turn is in the ids but carries no loss
    not_learned = tok.decode(example.ids[example.loss_mask == 0], skip_special_tokens=False)
    assert "It is 5." in not_learned and "8" not in not_learned


def test_text_records_carry_loss_everywhere(tmp_path, tok):
    example = tokenize_sft(read_dataset(write_jsonl(tmp_path / "t.jsonl", [{"text": "The cat slept."}])),
                           tok)[0]
    assert example.ids.tolist() == tok.encode("The cat slept.") + [tok.eos_token_id]
    assert example.loss_mask.all() and example.prompt_length == 0
    assert example.num_loss_tokens == example.length - 1


def test_truncation_is_counted_and_warned(tmp_path, tok):
    rows = [{"prompt": "Q", "completion": " a b c d e f g h i j k l m n o p"},
            {"prompt": "Q", "completion": " a"},
            {"prompt": "The quick brown fox jumps over the lazy dog " * 3, "completion": " x"}]
    dataset = read_dataset(write_jsonl(tmp_path / "c.jsonl", rows))
    with pytest.warns(UserWarning, match=r"2 of 3 examples were longer than max_seq_length=8.*1 had no "
                                         r"completion left and were dropped"):
        result = tokenize_sft(dataset, tok, max_seq_length=8)
    assert (result.num_truncated, result.num_dropped, len(result)) == (2, 1, 2)
    assert [e.record_index for e in result] == [0, 1]
    assert result[0].length == 8 and result[0].truncated and not result[1].truncated


def test_preference_pairs_share_the_prompt(tmp_path, tok):
    rows = [{"prompt": "What is 2 + 2?", "chosen": " 4.", "rejected": " 5."},
            # the common layout: chosen/rejected as full conversations, prompt repeated
            {"prompt": "Hi", "chosen": [{"role": "user", "content": "Hi"},
                                        {"role": "assistant", "content": "Hello!"}],
             "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go."}]}]
    result = tokenize_preference(read_dataset(write_jsonl(tmp_path / "p.jsonl", rows)), tok)
    plain, chat = result
    assert isinstance(plain, PreferenceExample)
    prompt_ids = tok.encode("What is 2 + 2?")
    assert plain.chosen_ids.tolist() == prompt_ids + tok.encode(" 4.", False) + [tok.eos_token_id]
    assert plain.rejected_ids.tolist() == prompt_ids + tok.encode(" 5.", False) + [tok.eos_token_id]
    for ex in (plain, chat):
        p = ex.prompt_length
        assert ex.chosen_ids[:p].tolist() == ex.rejected_ids[:p].tolist()
        assert not ex.chosen_mask[:p].any() and ex.chosen_mask[p:].all() and ex.rejected_mask[p:].all()
    chat_prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert chat.chosen_ids[:chat.prompt_length].tolist() == tok.encode(chat_prompt, False)
    assert tok.decode(chat.chosen_ids[chat.chosen_mask == 1], skip_special_tokens=False).startswith("Hello!")
    mismatch = [{"prompt": "Hi", "chosen": [{"role": "user", "content": "Hi"},
                                            {"role": "assistant", "content": "A"}],
                 "rejected": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "B"}]}]
    with pytest.raises(LazarusError, match=r"p2\.jsonl:1: 'chosen' and 'rejected' start from different"):
        tokenize_preference(read_dataset(write_jsonl(tmp_path / "p2.jsonl", mismatch)), tok)


def test_prompt_records_keep_their_fields(tmp_path, tok):
    rows = [{"prompt": "What is 6 * 7?", "answer": 42}, {"prompt": [{"role": "user", "content": "Hi"}],
                                                         "answer": 1}]
    dataset = read_dataset(write_jsonl(tmp_path / "r.jsonl", rows), format="prompt")
    plain, chat = tokenize_prompts(dataset, tok)
    assert plain.prompt_ids.tolist() == tok.encode("What is 6 * 7?") and plain.answer == 42
    assert chat.prompt_text.endswith("<|im_start|>assistant\n")
    assert chat.prompt_ids.tolist() == tok.encode(chat.prompt_text, add_special_tokens=False)
    wrapped = tokenize_prompts(dataset, tok, chat_template=True)[0]
    assert wrapped.prompt_text == tok.apply_chat_template([{"role": "user", "content": "What is 6 * 7?"}])


# -- batching --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sft_examples():
    """Examples of varied lengths (ids encode the example number so rows can be traced)."""
    rng = np.random.default_rng(0)
    examples = []
    for i in range(103):
        length = int(rng.integers(3, 40))
        prompt = int(rng.integers(1, length))
        examples.append(SFTExample(ids=[1] + [10 + i] * (length - 1),
                                   loss_mask=[0] * prompt + [1] * (length - prompt), prompt_length=prompt,
                                   record_index=i))
    return examples


def _epoch_indices(iterator) -> list[list[int]]:
    return [batch.indices.tolist() for batch in iterator.epoch()]


@pytest.mark.parametrize("settings", [{"batch_size": 8}, {"max_tokens_per_batch": 160}])
def test_each_example_once_per_epoch_and_seeded_order(sft_examples, settings):
    iterator = BatchIterator(sft_examples, seed=1, pad_id=0, **settings)
    first = _epoch_indices(iterator)
    second = _epoch_indices(iterator)
    for epoch in (first, second):
        flat = [i for batch in epoch for i in batch]
        assert sorted(flat) == list(range(len(sft_examples)))
    assert first != second  # each epoch is reshuffled
    assert _epoch_indices(BatchIterator(sft_examples, seed=1, pad_id=0, **settings)) == first
    assert _epoch_indices(BatchIterator(sft_examples, seed=2, pad_id=0, **settings)) != first
    if "max_tokens_per_batch" in settings:
        for batch in BatchIterator(sft_examples, seed=1, pad_id=0, **settings).epoch():
            assert batch.ids.size <= 160
        assert len({len(b) for b in first}) > 1  # short examples share bigger batches


def test_batches_are_padded_arrays_with_masked_padding(sft_examples):
    batch = next(iter(BatchIterator(sft_examples, batch_size=5, seed=0, pad_id=3)))
    assert isinstance(batch, SFTBatch)
    assert batch.ids.dtype == np.int32 and batch.loss_mask.dtype == np.float32
    assert batch.ids.shape == batch.loss_mask.shape == (5, int(batch.lengths.max()))
    for row, index in enumerate(batch.indices):
        example, length = sft_examples[index], batch.lengths[row]
        assert length == example.length
        assert batch.ids[row, :length].tolist() == example.ids.tolist()
        assert batch.loss_mask[row, :length].tolist() == example.loss_mask.tolist()
        assert (batch.ids[row, length:] == 3).all() and not batch.loss_mask[row, length:].any()


def test_bucketing_reduces_padding(sft_examples):
    def padding(iterator):
        return sum(int(b.ids.size - b.lengths.sum()) for b in iterator.epoch())

    bucketed = padding(BatchIterator(sft_examples, batch_size=8, seed=0))
    unsorted = padding(BatchIterator(sft_examples, batch_size=8, seed=0, sort_window=1))
    assert bucketed < unsorted / 2


@pytest.mark.parametrize("settings", [{"batch_size": 6}, {"max_tokens_per_batch": 200}])
def test_resume_from_saved_position_yields_exactly_the_remaining_batches(sft_examples, settings):
    reference = BatchIterator(sft_examples, seed=7, pad_id=0, **settings)
    per_epoch = reference.batches_per_epoch(0)
    stream = iter(reference)
    expected = [next(stream) for _ in range(per_epoch + 10)]  # crosses into epoch 1
    for stop in (0, 3, per_epoch - 1, per_epoch, per_epoch + 2):
        run = BatchIterator(sft_examples, seed=7, pad_id=0, **settings)
        batches = iter(run)
        for _ in range(stop):
            next(batches)
        saved = json.loads(json.dumps(run.position.as_dict()))  # as a trainer checkpoint holds it
        resumed = BatchIterator(sft_examples, seed=7, pad_id=0, position=BatchPosition.from_dict(saved),
                                **settings)
        rest = iter(resumed)
        for want in expected[stop:]:
            got = next(rest)
            assert (got.epoch, got.step) == (want.epoch, want.step)
            assert got.indices.tolist() == want.indices.tolist()
            assert np.array_equal(got.ids, want.ids) and np.array_equal(got.loss_mask, want.loss_mask)
    assert expected[per_epoch].epoch == 1 and expected[per_epoch].step == 0


def test_resume_refuses_changed_data_or_seed(sft_examples):
    run = BatchIterator(sft_examples, batch_size=4, seed=0)
    next(iter(run))
    with pytest.raises(LazarusError, match="data or the batching settings changed"):
        BatchIterator(sft_examples[:-1], batch_size=4, seed=0, position=run.position)
    with pytest.raises(LazarusError, match="seed 0"):
        BatchIterator(sft_examples, batch_size=4, seed=1,
                      position=BatchPosition.from_dict(run.position.as_dict() | {"seed": 0}))


@pytest.mark.parametrize("settings", [{"batch_size": 8}, {"max_tokens_per_batch": 120}])
def test_rank_shards_are_disjoint_and_union_to_the_global_batch(sft_examples, settings):
    world = 3
    single = list(BatchIterator(sft_examples, seed=5, **settings).epoch())
    ranks = [list(BatchIterator(sft_examples, seed=5, rank=r, world_size=world, **settings).epoch())
             for r in range(world)]
    assert all(len(r) == len(single) for r in ranks)  # every rank runs the same number of steps
    saw_filler = False
    for step, global_batch in enumerate(single):
        shards = [ranks[r][step] for r in range(world)]
        real = [set(s.indices[s.indices >= 0].tolist()) for s in shards]
        assert sum(len(r) for r in real) == len(set().union(*real))  # disjoint
        assert set().union(*real) == set(global_batch.indices.tolist())  # union is the global batch
        for shard in shards:
            for row, index in enumerate(shard.indices):
                if index < 0:  # filler row: same shape, no loss
                    saw_filler = True
                    assert not shard.loss_mask[row].any()
                else:
                    g = global_batch.indices.tolist().index(index)
                    n = global_batch.lengths[g]
                    assert shard.ids[row, :n].tolist() == global_batch.ids[g, :n].tolist()
                    assert shard.loss_mask[row, :n].tolist() == global_batch.loss_mask[g, :n].tolist()
        total_loss = sum(s.loss_mask.sum() for s in shards)
        assert total_loss == global_batch.loss_mask.sum()
    if "max_tokens_per_batch" in settings:
        assert saw_filler  # long examples make batches smaller than the world size


def test_preference_batches_pad_both_sides_to_one_length(tmp_path, tok):
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f" {2 * i}.", "rejected": f" {2 * i + 1}, surely."}
            for i in range(9)]
    examples = tokenize(read_dataset(write_jsonl(tmp_path / "p.jsonl", rows)), tok)
    batches = list(BatchIterator(examples, batch_size=4, seed=0, pad_id=pad_id_for(tok)).epoch())
    assert sorted(i for b in batches for i in b.indices.tolist()) == list(range(9))
    batch = batches[0]
    assert isinstance(batch, PreferenceBatch)
    assert batch.chosen_ids.shape == batch.rejected_ids.shape == batch.chosen_mask.shape
    for row, index in enumerate(batch.indices):
        n = batch.rejected_lengths[row]
        assert batch.rejected_ids[row, :n].tolist() == examples[index].rejected_ids.tolist()
        assert (batch.rejected_ids[row, n:] == tok.pad_token_id).all()


# -- math data -------------------------------------------------------------------------------------
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(expression: str):
    """Evaluate + - * / arithmetic without eval()."""
    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise ValueError(f"unexpected syntax in {expression!r}")
    return walk(ast.parse(expression, mode="eval"))


def test_math_answers_are_correct_and_completions_parse():
    problems = math_data.generate(600, seed=11)
    assert len({p.expression for p in problems if p.kind != "word"} | {p.prompt for p in problems
                                                                       if p.kind == "word"}) == 600
    assert {p.kind for p in problems} == set(math_data.KINDS)
    for p in problems:
        value = _evaluate(p.expression)
        assert value == p.answer and float(value).is_integer(), p
        assert extract_answer(p.completion) == p.answer
        # every worked step is right too ("First, 9 * 11 = 99. Then, 185 + 99 = 284.")
        steps = re.findall(r"(\d+ [-+*/] \d+) = (-?\d+)", p.completion)
        assert steps and all(_evaluate(lhs) == int(rhs) for lhs, rhs in steps), p.completion
        assert p.completion.endswith(f"The answer is {p.answer}.")
        assert extract_answer(p.wrong_completion) == p.wrong_answer != p.answer
        if p.kind != "word":
            assert p.expression in p.prompt
    only = math_data.generate(50, seed=1, kinds="mul,div")
    assert {p.kind for p in only} == {"mul", "div"}
    with pytest.raises(LazarusError, match="unknown problem kind"):
        math_data.generate(5, kinds="add,pow")
    # two-digit divisions run out: a clear error instead of a hang or repeats
    with pytest.raises(LazarusError, match=r"could only make \d+ distinct problems of kinds div"):
        math_data.generate(10_000, seed=0, kinds="div")


def test_extract_answer_round_trips_and_formats():
    for value in (0, 7, -12, 1234567):
        assert extract_answer(f"Some work. {math_data.format_answer(value)}") == value
    assert extract_answer("the answer is 1,234.") == 1234
    assert extract_answer("The answer is 3.5") == 3.5
    assert extract_answer("The answer is 4. Wait, no. The answer is 5.") == 5
    assert extract_answer("lots of steps\n#### 72") == 72
    assert extract_answer("so \\boxed{-3}") == -3
    assert extract_answer("I think it is 42") is None
    assert extract_answer("") is None and extract_answer(None) is None


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_math_cli_is_reproducible_atomic_and_refuses_overwrite(tmp_path, tok):
    runner = CliRunner()
    args = ["data", "generate", "math", "--count", "120", "--seed", "4", "--valid-fraction", "0.1"]
    first = runner.invoke(main, [*args, "--output", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    assert "120 math problems" in first.output
    assert runner.invoke(main, [*args, "--output", str(tmp_path / "b")]).exit_code == 0
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert a == b and sorted(a) == sorted(f"{d}/{s}.jsonl" for d in ("dual-reward", "preference", "prompts", "sft")
                                          for s in ("test", "train", "valid"))
    other = runner.invoke(main, [*args[:-4], "--seed", "5", "--output", str(tmp_path / "c")])
    assert other.exit_code == 0 and _tree_bytes(tmp_path / "c") != a

    # the three views agree line by line, and the prompts files check out against the answers
    for split, expected in (("train", 96), ("valid", 12), ("test", 12)):
        sft = [json.loads(line) for line in (tmp_path / "a" / "sft" / f"{split}.jsonl").open()]
        pref = [json.loads(line) for line in (tmp_path / "a" / "preference" / f"{split}.jsonl").open()]
        prompts = [json.loads(line) for line in (tmp_path / "a" / "prompts" / f"{split}.jsonl").open()]
        assert len(sft) == len(pref) == len(prompts) == expected
        for s, p, r in zip(sft, pref, prompts, strict=True):
            assert s["prompt"] == p["prompt"] == r["prompt"] and p["chosen"] == s["completion"]
            assert extract_answer(s["completion"]) == r["answer"] == _evaluate(r["expression"])
            assert extract_answer(p["rejected"]) != r["answer"]

    # the written data feeds the readers as each trainer format
    assert load_splits(tmp_path / "a" / "sft", format="sft").kind == "completion"
    assert load_splits(tmp_path / "a" / "preference", format="preference").kind == "preference"
    assert load_splits(tmp_path / "a" / "prompts", format="prompt").train[0].answer is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(tokenize(load_splits(tmp_path / "a" / "sft").train, tok, max_seq_length=128)) == 96

    # no overwrite without --force; the files are untouched; --force replaces them
    refused = runner.invoke(main, [*args[:-4], "--seed", "5", "--output", str(tmp_path / "a")])
    assert refused.exit_code == 2 and "--force" in refused.output
    assert _tree_bytes(tmp_path / "a") == a
    forced = runner.invoke(main, [*args[:-4], "--seed", "5", "--output", str(tmp_path / "a"), "--force"])
    assert forced.exit_code == 0 and _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "c")
    assert not [p for p in (tmp_path / "a").rglob("*") if p.name.startswith(".")]  # no temp files left

    bad = runner.invoke(main, ["data", "generate", "math", "-o", str(tmp_path / "d"), "--kinds", "pow"])
    assert bad.exit_code == 2 and "unknown problem kind" in bad.output
    assert not (tmp_path / "d").exists()


def test_data_info_reports_counts_and_token_lengths(tmp_path, tok):
    out = tmp_path / "m"
    math_data.write_math_data(math_data.generate(30, seed=0), out)
    model_dir = Path(tok.source)
    result = CliRunner().invoke(main, ["data", "info", str(out / "sft"), "--model", str(model_dir), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["kind"] == "completion" and report["format"] == "sft"
    assert {k: v["records"] for k, v in report["splits"].items()} == {"train": 24, "valid": 3, "test": 3}
    lengths = [e.length for e in tokenize(load_splits(out / "sft").train, tok)]
    assert report["splits"]["train"]["tokens"]["max"] == max(lengths)
    assert report["splits"]["train"]["tokens"]["total"] == sum(lengths)


def test_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    """A failure while writing leaves the old file intact and no temporary file behind."""
    from lazarus.data import records

    target = write_jsonl(tmp_path / "train.jsonl", [{"text": "old"}])

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        records.write_jsonl(target, [{"text": "new"}], force=True)
    assert target.read_text() == json.dumps({"text": "old"}) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]


def test_prompt_batches_carry_records_for_rewards(tmp_path, tok):
    rows = [{"prompt": f"What is {i} * 3?", "answer": 3 * i} for i in range(10)]
    examples = tokenize_prompts(read_dataset(write_jsonl(tmp_path / "r.jsonl", rows), format="prompt"), tok)
    shards = [list(BatchIterator(examples, batch_size=4, seed=0, rank=r, world_size=2).epoch())
              for r in range(2)]
    seen = []
    for left, right in zip(*shards, strict=True):
        for batch in (left, right):
            assert len(batch) == len(batch.indices) >= 1
            for index, example in zip(batch.indices.tolist(), batch.examples, strict=True):
                if index >= 0:
                    seen.append(index)
                    assert example.answer == rows[index]["answer"]
                    assert example.prompt_ids.tolist() == tok.encode(rows[index]["prompt"])
    assert sorted(seen) == list(range(10))
