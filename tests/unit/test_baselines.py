"""The baselines a model must beat: exact on sources whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.workloads.char_lm.baselines import baselines as lm_baselines
from components.workloads.char_lm.baselines import bigram_weight
from components.workloads.image_classifier.baselines import baselines as image_baselines


def _markov1(n: int, vocab: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A first-order Markov chain over `vocab` symbols (sparse rows) and its transition matrix."""
    rng = np.random.default_rng(seed)
    trans = rng.dirichlet(np.full(vocab, 0.1), size=vocab)
    ids = np.zeros(n, dtype=np.int64)
    u = rng.random(n)
    cum = trans.cumsum(1)
    for i in range(1, n):
        ids[i] = min(int(np.searchsorted(cum[ids[i - 1]], u[i])), vocab - 1)
    return ids, trans


def test_the_bigram_reaches_the_entropy_rate_of_a_first_order_source():
    ids, trans = _markov1(200_000, 12, seed=1)
    train, val = ids[:180_000], ids[180_000:]
    out = lm_baselines(train, {"val": val}, 12)
    # the source's own loss on val: what no model can beat on average
    truth = float(-np.mean(np.log(trans[val[:-1], val[1:]])))
    assert out["baseline_bigram_val_loss"] == pytest.approx(truth, abs=0.01)
    assert out["baseline_unigram_val_loss"] > truth + 0.3  # the unigram misses the structure
    assert out["baseline_bigram_weight"] > 0.9


def test_the_bigram_weight_falls_when_pairs_carry_nothing():
    rng = np.random.default_rng(0)
    iid = rng.integers(0, 50, 20_000)  # independent symbols: counts of pairs are only noise
    assert bigram_weight(iid, 50) < 0.5
    out = lm_baselines(iid, {"val": rng.integers(0, 50, 5_000)}, 50)
    assert out["baseline_unigram_val_loss"] == pytest.approx(math.log(50), abs=0.02)
    assert out["baseline_bigram_val_loss"] <= out["baseline_unigram_val_loss"] + 0.01


def test_unseen_characters_and_pairs_keep_the_loss_finite():
    train = np.array([1, 2, 1, 2, 1, 2, 3, 1, 2] * 20)
    out = lm_baselines(train, {"val": np.array([0, 4, 4, 1, 0])}, 5)
    assert all(math.isfinite(v) for v in out.values())


def test_image_baselines_majority_and_linear():
    rng = np.random.default_rng(0)
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    x = (rng.random((100, 4, 4, 1)) * 40).astype(np.uint8)
    x[:, :2, :, 0] = (y * 100).astype(np.uint8)[:, None, None]  # pixels give the class away: linear gets it
    x = x.transpose(0, 3, 1, 2)  # (N, C, H, W), as the stage reads them
    out = image_baselines(x, y, y, {"val": [(x[:64], y[:64]), (x[64:], y[64:])]})
    assert out["baseline_majority_val_accuracy"] == pytest.approx(0.6)
    assert out["baseline_linear_val_accuracy"] > 0.95
