"""The simplest models a char-LM must beat, from the same splits: a unigram and an
interpolated bigram over the characters of train, in nats/char.

The bigram is p(b | a) = w * c(a, b) / c(a) + (1 - w) * p(b), with p the add-one unigram. The
weight w is chosen on train alone (counts from its first 90%, w picked on its last 10%), so
val and test stay unseen; then the counts are taken over the whole train split.
"""

from __future__ import annotations

import numpy as np

WEIGHTS = np.concatenate([np.linspace(0.0, 0.99, 100), [0.995, 0.998, 0.999]])


def _unigram(train: np.ndarray, vocab_size: int) -> np.ndarray:
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64)
    return (counts + 1.0) / (counts.sum() + vocab_size)


def _pair_counts(ids: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted pair codes a * V + b, their counts, c(a) per symbol) of consecutive ids."""
    codes = ids[:-1].astype(np.int64) * vocab_size + ids[1:]
    pairs, counts = np.unique(codes, return_counts=True)
    first = np.bincount(ids[:-1], minlength=vocab_size).astype(np.float64)
    return pairs, counts.astype(np.float64), first


def _loss(cond: np.ndarray, uni: np.ndarray, w: float) -> float:
    return float(-np.mean(np.log(w * cond + (1.0 - w) * uni)))


def bigram_weight(train: np.ndarray, vocab_size: int) -> float:
    """The interpolation weight that best predicts the last 10% of train from its first 90%."""
    cut = int(len(train) * 0.9)
    head, tail = BigramTable.counts(train[:cut], vocab_size), train[cut - 1:]
    cond, uni = head.probs(tail[:-1], tail[1:]), head.unigram[tail[1:]]  # w = 1: the pure count ratio
    return float(WEIGHTS[int(np.argmin([_loss(cond, uni, w) for w in WEIGHTS]))])


def baselines(train: np.ndarray, splits: dict[str, np.ndarray], vocab_size: int) -> dict[str, float]:
    """`baseline_unigram_<split>_loss`, `baseline_bigram_<split>_loss` (nats/char) for each split,
    and the bigram's weight; each split scored on its characters after the first."""
    table = BigramTable.fit(train, vocab_size)
    out: dict[str, float] = {"baseline_bigram_weight": table.w}
    for split, ids in splits.items():
        out[f"baseline_unigram_{split}_loss"] = float(-np.mean(np.log(table.unigram[ids[1:]])))
        out[f"baseline_bigram_{split}_loss"] = float(-np.mean(np.log(table.probs(ids[:-1], ids[1:]))))
    return out


class BigramTable:
    """The interpolated count bigram as a model part: p(b | a) = w * c(a, b) / c(a) + (1 - w) * p(b),
    the same estimate `baselines` scores, kept sparse (only the pairs train contains)."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, cond: np.ndarray, unigram: np.ndarray, w: float):
        self.rows, self.cols = rows.astype(np.int64), cols.astype(np.int64)
        self.cond, self.unigram, self.w = cond.astype(np.float64), unigram.astype(np.float64), float(w)

    @classmethod
    def counts(cls, train: np.ndarray, vocab_size: int, w: float = 1.0) -> BigramTable:
        """The table of `train`'s pair counts with weight `w`."""
        pairs, counts, first = _pair_counts(train, vocab_size)
        rows, cols = pairs // vocab_size, pairs % vocab_size
        return cls(rows, cols, counts / first[rows], _unigram(train, vocab_size), w)

    @classmethod
    def fit(cls, train: np.ndarray, vocab_size: int) -> BigramTable:
        """Counts over the whole train split; the weight chosen on train alone (`bigram_weight`)."""
        return cls.counts(train, vocab_size, bigram_weight(train, vocab_size))

    @property
    def vocab_size(self) -> int:
        return len(self.unigram)

    def state(self) -> dict:
        """Plain arrays for the model file."""
        return {"rows": self.rows, "cols": self.cols, "cond": self.cond, "unigram": self.unigram, "w": self.w}

    @classmethod
    def from_state(cls, s: dict) -> BigramTable:
        return cls(s["rows"], s["cols"], s["cond"], s["unigram"], s["w"])

    def probs(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """p(nxt | prev), elementwise."""
        v = self.vocab_size
        codes, want = self.rows * v + self.cols, prev.astype(np.int64) * v + nxt
        at = np.clip(np.searchsorted(codes, want), 0, max(len(codes) - 1, 0))
        found = (codes[at] == want) if len(codes) else np.zeros(len(want), bool)
        cond = np.where(found, self.cond[at] if len(codes) else 0.0, 0.0)
        return self.w * cond + (1.0 - self.w) * self.unigram[nxt]
