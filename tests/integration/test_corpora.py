"""The default char-LM on corpora nobody tuned it for (issue: a 900-character alphabet lost to a
count bigram and was crowned anyway). Default params (a shorter budget where said), hand-set
values, 2 Ray Train workers: the model must beat the interpolated bigram on val by at least
0.2 nats/char."""

from __future__ import annotations

import pytest

from components.workloads.char_lm.corpora import (
    MarkovSource,
    english_text,
    fit_and_score,
    korean_text,
)
from components.workloads.char_lm.params import CharLMParams

pytestmark = [pytest.mark.slow, pytest.mark.corpora]

MARGIN = 0.2  # nats/char below the count bigram on val
# a quarter of the default max_tokens (6.5M) keeps the suite fast; bench/corpora.py runs the default
SHORT = CharLMParams.model_validate({"train": {"max_tokens": 400 * 64 * 64}})


def test_a_small_markov_corpus_beats_the_bigram_and_nears_the_entropy_rate(ray_driver, tmp_path):
    src = MarkovSource.random(seed=0)
    # SHORT is two thirds of what the default run trains on here before patience ends it (2.4M)
    m = fit_and_score(src.sample(200_000, seed=1), tmp_path, SHORT, name="markov-small")
    rate = src.entropy_rate()
    print(f"markov-small: model {m['val_loss']:.4f}, bigram {m['baseline_bigram_val_loss']:.4f}, "
          f"entropy rate {rate:.4f}, {m['epochs']} epochs (published {m['published_epoch']})")
    assert m["val_loss"] < m["baseline_bigram_val_loss"] - MARGIN
    assert m["val_loss"] > rate - 0.05  # nothing beats the source itself (sampling noise aside)


def test_a_small_corpus_with_a_large_alphabet_beats_the_bigram(ray_driver, tmp_path):
    text = korean_text()
    m = fit_and_score(text, tmp_path, name="korean")
    print(f"korean: {len(text):,} chars, vocab {m['vocab_size']}: model {m['val_loss']:.4f}, "
          f"bigram {m['baseline_bigram_val_loss']:.4f}, {m['epochs']} epochs (published {m['published_epoch']})")
    assert m["vocab_size"] > 500
    assert m["val_loss"] < m["baseline_bigram_val_loss"] - MARGIN


def test_an_english_corpus_of_300k_characters_beats_the_bigram(ray_driver, tmp_path):
    p = SHORT
    m = fit_and_score(english_text(300_000), tmp_path, p, name="english")
    print(f"english-300k: model {m['val_loss']:.4f}, bigram {m['baseline_bigram_val_loss']:.4f}, {m['steps']} steps")
    assert m["steps"] == 400 * 64 * 64 // (p.train.bs * p.train.bptt)  # max_tokens holds to the window
    assert m["val_loss"] < m["baseline_bigram_val_loss"] - MARGIN
