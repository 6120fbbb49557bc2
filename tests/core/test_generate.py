"""Generation: samplers on known logits, stop strings, KV-cache decoding, batching, seeds, mlx-lm parity."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from lazarus.errors import LazarusError
from lazarus.generation import (
    SamplingConfig,
    apply_min_p,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    make_sampler,
)
from lazarus.generation.text import _StopStrings

# probabilities 0.5, 0.25, 0.15, 0.06, 0.04 in a shuffled order
PROBS = np.array([0.06, 0.25, 0.04, 0.5, 0.15])
LOGITS = mx.array(np.log(PROBS)[None].astype(np.float32))


def _kept(logits: mx.array) -> set[int]:
    row = np.array(logits[0])
    return {i for i, v in enumerate(row) if np.isfinite(v)}


# -- filters on known logits ----------------------------------------------------------------------------
def test_top_k_keeps_exactly_k_most_likely():
    assert _kept(apply_top_k(LOGITS, 1)) == {3}
    assert _kept(apply_top_k(LOGITS, 3)) == {3, 1, 4}
    assert _kept(apply_top_k(LOGITS, 0)) == set(range(5))
    assert _kept(apply_top_k(LOGITS, 10)) == set(range(5))
    # kept logits are untouched
    np.testing.assert_array_equal(np.array(apply_top_k(LOGITS, 3))[0, [1, 3, 4]], np.array(LOGITS)[0, [1, 3, 4]])


def test_top_p_keeps_the_nucleus():
    assert _kept(apply_top_p(LOGITS, 0.5)) == {3}  # 0.5 alone reaches 0.5
    assert _kept(apply_top_p(LOGITS, 0.6)) == {3, 1}  # 0.5 < 0.6 -> add 0.25
    assert _kept(apply_top_p(LOGITS, 0.8)) == {3, 1, 4}  # 0.75 < 0.8 -> add 0.15
    assert _kept(apply_top_p(LOGITS, 0.95)) == {3, 1, 4, 0}
    assert _kept(apply_top_p(LOGITS, 0.01)) == {3}  # never empty
    assert _kept(apply_top_p(LOGITS, 1.0)) == set(range(5))


def test_min_p_relative_to_best():
    assert _kept(apply_min_p(LOGITS, 0.5)) == {3, 1}  # >= 0.25
    assert _kept(apply_min_p(LOGITS, 0.2)) == {3, 1, 4}  # >= 0.10
    assert _kept(apply_min_p(LOGITS, 0.9)) == {3}
    assert _kept(apply_min_p(LOGITS, 0.9, min_tokens_to_keep=3)) == {3, 1, 4}


def test_repetition_penalty_direction():
    logits = mx.array([[2.0, -1.0, 0.5, 3.0]])
    history = mx.array([[0, 1, 1]])  # a token seen twice is penalised once
    out = np.array(apply_repetition_penalty(logits, history, 2.0))[0]
    np.testing.assert_allclose(out, [1.0, -2.0, 0.5, 3.0])
    # > 1 makes seen tokens less likely whatever their sign; < 1 more likely
    out = np.array(apply_repetition_penalty(logits, history, 0.5))[0]
    np.testing.assert_allclose(out, [4.0, -0.5, 0.5, 3.0])


def test_filters_work_row_by_row():
    logits = mx.array(np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=np.float32)))
    kept = np.isfinite(np.array(apply_top_k(logits, 1)))
    assert kept.tolist() == [[True, False, False], [False, False, True]]
    kept = np.isfinite(np.array(apply_top_p(logits, 0.8)))
    assert kept.tolist() == [[True, True, False], [False, True, True]]


def test_greedy_sampler_is_argmax():
    sample = make_sampler(SamplingConfig())
    assert sample(mx.array([[0.1, 5.0, 0.3], [9.0, 1.0, 2.0]])).tolist() == [1, 0]


def test_sampler_follows_filtered_distribution():
    """Sampling at temperature 1 with top-k=2 draws only the two best, in a ~2:1 ratio."""
    sample = make_sampler(SamplingConfig(temperature=1.0, top_k=2))
    logits = mx.broadcast_to(LOGITS, (4000, 5))
    draws = np.array(sample(logits, mx.random.key(3)))
    counts = np.bincount(draws, minlength=5)
    assert set(np.nonzero(counts)[0]) == {1, 3}
    assert abs(counts[3] / counts.sum() - 2 / 3) < 0.03
    # low temperature sharpens towards the best token
    cold = make_sampler(SamplingConfig(temperature=0.1))
    assert (np.array(cold(logits, mx.random.key(3))) == 3).mean() > 0.99


def test_seeded_sampler_is_reproducible():
    sample = make_sampler(SamplingConfig(temperature=1.0))
    logits = mx.zeros((1, 50))
    a = [sample(logits, k).item() for k in mx.random.split(mx.random.key(7), 20)]
    b = [sample(logits, k).item() for k in mx.random.split(mx.random.key(7), 20)]
    c = [sample(logits, k).item() for k in mx.random.split(mx.random.key(8), 20)]
    assert a == b and a != c


def test_sampling_config_validates():
    with pytest.raises(LazarusError, match="top_p must be between 0 and 1"):
        SamplingConfig(top_p=1.5)
    with pytest.raises(LazarusError, match="temperature must be >= 0"):
        SamplingConfig(temperature=-1)
    assert SamplingConfig(temperature="0.5").temperature == 0.5
    assert SamplingConfig().greedy and not SamplingConfig(temperature=0.7).greedy


# -- stop strings ---------------------------------------------------------------------------------------
def test_stop_strings_cut_and_hold_back_partial_matches():
    stops = _StopStrings(["</answer>", "\n\n"])
    assert stops.push("The answer") == ("The answer", False)
    assert stops.push(" is 4</") == (" is 4", False)  # "</" might start "</answer>"
    assert stops.push("ans") == ("", False)
    assert stops.push("wer> more") == ("", True)

    stops = _StopStrings(["STOP"])
    assert stops.push("a ST") == ("a ", False)
    assert stops.push("ILL going") == ("STILL going", False)  # false alarm released
    assert stops.push(" S") == (" ", False)
    assert stops.flush() == "S"
    assert _StopStrings([]).push("anything") == ("anything", False)



# -- on a real (tiny, random) checkpoint loaded through lazarus.load_model ---------------------------
PROMPTS = ["What is 12 + 7?", "The cat", "Hello! How are you today? I am fine, thank you. " * 2]


@pytest.fixture(scope="module")
def tiny_llama(tiny_checkpoint):
    """A random 2-layer llama in HF layout (tests/conftest.py), loaded through lazarus.load_model."""
    from lazarus.loader import load_model

    path = tiny_checkpoint("llama")
    model, tokenizer, _ = load_model(path)
    return path, model, tokenizer


def _full_recompute_greedy(model, prompt_ids, n):
    ids = list(prompt_ids)
    out, logits = [], []
    for _ in range(n):
        last = model(mx.array([ids]))[0, -1]
        logits.append(last)
        out.append(mx.argmax(last).item())
        ids.append(out[-1])
    return out, logits


# mistral's tiny config has an 8-token sliding window, gemma2 alternates windows and soft-caps
FAMILIES_FOR_CACHE = ["llama", "mistral", "gemma2"]


@pytest.mark.parametrize("family", FAMILIES_FOR_CACHE)
def test_kv_cache_decode_equals_full_recompute(tiny_checkpoint, family):
    from lazarus.generation import generate
    from lazarus.loader import load_model

    model, tok, _ = load_model(tiny_checkpoint(family))
    prompt = tok.encode(PROMPTS[2])
    expected, full_logits = _full_recompute_greedy(model, prompt, 12)
    for step in (512, 5):  # one prefill pass, and several chunks
        result = generate(model, tok, prompt, max_tokens=12, prefill_step_size=step, stop_token_ids=[])
        assert result.token_ids == expected
    # the cached logits themselves match the full forward pass
    cache = model.make_cache()
    cached = model(mx.array([prompt]), cache=cache)[0, -1]
    np.testing.assert_allclose(np.array(cached), np.array(full_logits[0]), atol=1e-4)
    for i, token in enumerate(expected[:-1]):
        cached = model(mx.array([[token]]), cache=cache)[0, -1]
        np.testing.assert_allclose(np.array(cached), np.array(full_logits[i + 1]), atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES_FOR_CACHE)
def test_batched_equals_one_by_one(tiny_checkpoint, family):
    from lazarus.generation import batch_generate, generate
    from lazarus.loader import load_model

    model, tok, _ = load_model(tiny_checkpoint(family))
    for options in ({}, {"repetition_penalty": 1.5, "repetition_context_size": 8}):
        singles = [generate(model, tok, p, max_tokens=10, **options) for p in PROMPTS]
        batch = batch_generate(model, tok, PROMPTS, max_tokens=10, **options)
        assert [r.token_ids for r in batch] == [r.token_ids for r in singles]
        assert [r.text for r in batch] == [r.text for r in singles]
        assert [r.prompt_token_ids for r in batch] == [tok.encode(p) for p in PROMPTS]


def test_batched_rows_stop_independently(tiny_llama):
    from lazarus.generation import batch_generate, generate

    _, model, tok = tiny_llama
    free = [generate(model, tok, p, max_tokens=12) for p in PROMPTS]
    # a token row 1 emits early and the other rows never do
    others = set(free[0].token_ids) | set(free[2].token_ids)
    stopper = next(t for t in free[1].token_ids[:6] if t not in others)

    class BatchSizes:
        """The model, recording the batch size of every forward pass."""

        def __init__(self):
            self.sizes = []

        def __call__(self, ids, cache=None, mask=None):
            self.sizes.append(ids.shape[0])
            return model(ids, cache=cache, mask=mask)

        def make_cache(self):
            return model.make_cache()

    for options in ({}, {"repetition_penalty": 1.3}):
        singles = [generate(model, tok, p, max_tokens=12, stop_token_ids=[stopper], **options) for p in PROMPTS]
        recorder = BatchSizes()
        batch = batch_generate(recorder, tok, PROMPTS, max_tokens=12, stop_token_ids=[stopper], **options)
        assert [r.token_ids for r in batch] == [r.token_ids for r in singles]
        assert [r.text for r in batch] == [r.text for r in singles]
        assert batch[1].finish_reason == "stop" and batch[1].token_ids[-1] == stopper
        assert len(batch[1].token_ids) <= 6
        assert len(batch[0].token_ids) == len(batch[2].token_ids) == 12  # the other rows kept going
        # the finished row left the batch: later forward passes run on fewer rows
        assert recorder.sizes[0] == 3 and recorder.sizes[-1] < 3


def test_seed_reproducibility(tiny_llama):
    from lazarus.generation import SamplingConfig, batch_generate, generate

    _, model, tok = tiny_llama
    sampling = SamplingConfig(temperature=1.0, seed=11)
    a = generate(model, tok, PROMPTS[0], max_tokens=16, sampling=sampling)
    b = generate(model, tok, PROMPTS[0], max_tokens=16, sampling=sampling)
    c = generate(model, tok, PROMPTS[0], max_tokens=16, temperature=1.0, seed=12)
    greedy = generate(model, tok, PROMPTS[0], max_tokens=16)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids
    assert a.token_ids != greedy.token_ids
    # batches are reproducible too
    x = batch_generate(model, tok, PROMPTS, max_tokens=8, sampling=sampling)
    y = batch_generate(model, tok, PROMPTS, max_tokens=8, sampling=sampling)
    assert [r.token_ids for r in x] == [r.token_ids for r in y]


def test_stop_strings_stop_and_are_not_emitted(tiny_llama):
    from lazarus.generation import generate, stream_generate

    _, model, tok = tiny_llama
    free = generate(model, tok, PROMPTS[0], max_tokens=30, stop_token_ids=[])
    text = free.text
    assert len(text) > 12
    stop = text[6:10]
    first = text.find(stop)
    result = generate(model, tok, PROMPTS[0], max_tokens=30, stop=[stop, "never appears"])
    assert result.finish_reason == "stop"
    assert result.text == text[:first]
    assert stop not in result.text
    assert len(result.token_ids) < len(free.token_ids)
    streamed = "".join(c.text for c in stream_generate(model, tok, PROMPTS[0], max_tokens=30, stop=[stop]))
    assert streamed == result.text


def test_stop_tokens_and_max_tokens(tiny_llama):
    from lazarus.generation import generate, stream_generate

    _, model, tok = tiny_llama
    free = generate(model, tok, PROMPTS[0], max_tokens=15, stop_token_ids=[])
    assert free.finish_reason == "length" and len(free.token_ids) == 15
    assert free.text == tok.decode(free.token_ids)
    stopper = free.token_ids[5]
    cut = free.token_ids.index(stopper)
    result = generate(model, tok, PROMPTS[0], max_tokens=15, stop_token_ids=[stopper])
    assert result.finish_reason == "stop"
    assert result.token_ids == free.token_ids[:cut + 1]  # the stop token is returned...
    assert result.text == tok.decode(free.token_ids[:cut])  # ...but its text is not emitted
    chunks = list(stream_generate(model, tok, PROMPTS[0], max_tokens=15))
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert last.stats.generation_tokens == len(chunks) and last.stats.prompt_tokens == len(tok.encode(PROMPTS[0]))
    assert last.stats.generation_tps > 0 and last.stats.prompt_tps > 0 and last.stats.peak_memory_gb > 0


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gemma", "gemma2", "granite"])
def test_greedy_matches_mlx_lm(tiny_checkpoint, family):
    mlx_lm = pytest.importorskip("mlx_lm")
    from mlx_lm.sample_utils import make_sampler as mlx_make_sampler

    from lazarus.generation import generate
    from lazarus.loader import load_model

    # mlx-lm's mistral ignores sliding_window (HF applies it), so compare on full attention there
    path = tiny_checkpoint(family, **({"sliding_window": None} if family == "mistral" else {}))
    model, tok, _ = load_model(path)
    ref_model, ref_tok = mlx_lm.load(str(path))
    prompt = tok.encode(PROMPTS[0])
    ours = generate(model, tok, prompt, max_tokens=20, stop_token_ids=[])
    theirs = [r.token for r in mlx_lm.stream_generate(ref_model, ref_tok, prompt, max_tokens=20,
                                                       sampler=mlx_make_sampler(temp=0.0))]
    eos = sorted(tok.eos_token_ids)
    if not any(t in eos for t in ours.token_ids):
        assert ours.token_ids == theirs[:20]
    else:
        assert ours.token_ids[: len(theirs)] == theirs
    text = mlx_lm.generate(ref_model, ref_tok, prompt, max_tokens=20, sampler=mlx_make_sampler(temp=0.0))
    assert generate(model, tok, prompt, max_tokens=20).text == text


# -- the CLI ---------------------------------------------------------------------------------------------
def _run_cli(args, input=None):
    from click.testing import CliRunner

    from lazarus.cli import main

    return CliRunner().invoke(main, args, input=input, catch_exceptions=False)


def test_cli_streams_text_and_reports_speed(tiny_llama):
    from lazarus.generation import generate

    path, model, tok = tiny_llama
    res = _run_cli(["generate", "--model", str(path), "--prompt", PROMPTS[0], "--max-tokens", "12"])
    assert res.exit_code == 0, res.output
    expected = generate(model, tok, PROMPTS[0], max_tokens=12).text
    assert res.stdout == expected + "\n"
    assert "tokens/s" in res.stderr and "peak memory" in res.stderr
    n_prompt = len(tok.encode(PROMPTS[0]))
    assert f"prompt: {n_prompt} tokens" in res.stderr

    raw = _run_cli(["generate", "-m", str(path), "-p", "-", "--raw", "-n", "4"], input=PROMPTS[0])
    assert raw.exit_code == 0
    assert f"prompt: {n_prompt - 1} tokens" in raw.stderr  # no BOS in raw mode

    chat = _run_cli(["generate", "-m", str(path), "-p", "Hi", "--system", "Be brief.", "-n", "4"])
    n_chat = len(tok.encode_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]))
    assert chat.exit_code == 0 and f"prompt: {n_chat} tokens" in chat.stderr

    sampled = [_run_cli(["generate", "-m", str(path), "-p", "The", "-t", "1.0", "--top-p", "0.9",
                         "--seed", "3", "-n", "8"]).stdout for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_cli_applies_an_adapter(tiny_llama, tmp_path):
    from lazarus.adapters import AdapterConfig, adapter_weights, apply_adapter, save_adapter
    from lazarus.generation import generate
    from lazarus.loader import load_model

    path, base_model, tok = tiny_llama
    model, _, _ = load_model(path)
    config = AdapterConfig.from_dict({"fine_tune_type": "lora", "num_layers": -1,
                                      "lora_parameters": {"rank": 4, "scale": 10.0, "dropout": 0.0}})
    apply_adapter(model, config)
    mx.random.seed(5)
    trained = {k: mx.random.normal(v.shape) * 0.3 for k, v in adapter_weights(model, config).items()}
    model.load_weights(list(trained.items()), strict=False)
    save_adapter(model, tmp_path / "adapter", config)

    adapted, _, _ = load_model(path, adapter_path=tmp_path / "adapter")
    expected = generate(adapted, tok, PROMPTS[0], max_tokens=12).text
    assert expected != generate(base_model, tok, PROMPTS[0], max_tokens=12).text
    res = _run_cli(["generate", "-m", str(path), "-p", PROMPTS[0], "-n", "12",
                    "--adapter", str(tmp_path / "adapter")])
    assert res.exit_code == 0, res.output
    assert res.stdout == expected + "\n"


def test_cli_errors_are_one_line(tiny_llama, tmp_path):
    import json
    import shutil

    path, _, _ = tiny_llama
    res = _run_cli(["generate", "-m", str(path), "-p", "x", "--chat", "--raw"])
    assert res.exit_code == 2 and "exclude each other" in res.stderr
    no_template = tmp_path / "m"
    shutil.copytree(path, no_template)
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    res = _run_cli(["generate", "-m", str(no_template), "-p", "x", "--chat"])
    assert res.exit_code == 2
    assert "no chat template" in res.stderr and "Traceback" not in res.output
    res = _run_cli(["generate", "-m", str(tmp_path / "missing"), "-p", "x"])
    assert res.exit_code == 2


def test_public_api_names(tiny_llama):
    """`lazarus.generate(...)` works even after `lazarus.generate` the module was imported."""
    import lazarus
    import lazarus.generation as generate_module

    _, model, tok = tiny_llama
    result = lazarus.generate(model, tok, PROMPTS[0], max_tokens=5)
    assert result.token_ids == generate_module.generate(model, tok, PROMPTS[0], max_tokens=5).token_ids
    assert "".join(c.text for c in lazarus.stream_generate(model, tok, PROMPTS[0], max_tokens=5)) == result.text
