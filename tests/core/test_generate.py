"""Generation: samplers on known logits, stop strings, KV-cache decoding, batching, seeds, mlx-lm parity."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from lazarus.errors import LazarusError
from lazarus.generate import (
    SamplingConfig,
    _StopStrings,
    apply_min_p,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    make_sampler,
)

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

