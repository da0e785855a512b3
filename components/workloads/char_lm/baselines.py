"""The simplest models a char-LM must beat, from the same splits: a unigram and an
interpolated bigram over the characters of train, in nats/char.

The bigram is p(b | a) = w * c(a, b) / c(a) + (1 - w) * p(b), with p the add-one unigram. The
weight w is chosen on train alone (counts from its first 90%, w picked on its last 10%), so
val and test stay unseen; then the counts are taken over the whole train split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

WEIGHTS = np.concatenate([np.linspace(0.0, 0.99, 100), [0.995, 0.998, 0.999]])


CHUNK = 1 << 20  # tokens read at a time: the baselines stream train, val and test
TAIL_CHUNK = 1 << 16  # tokens scored at a time against every weight (103 of them)


def chunks_of(ids: np.ndarray, size: int = CHUNK) -> Iterator[np.ndarray]:
    """An array as consecutive pieces (what a token file read by ranges gives)."""
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


def _pairs(chunks: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(previous ids, next ids) of every consecutive pair, chunk by chunk, pairs across chunks included."""
    carry = None
    for c in chunks:
        c = np.asarray(c, dtype=np.int64)
        if not len(c):
            continue
        both = c if carry is None else np.concatenate([carry, c])
        if len(both) > 1:
            yield both[:-1], both[1:]
        carry = c[-1:]


def _counts(chunks: Iterable[np.ndarray], vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sorted pair codes a * V + b, their counts, c(a) per symbol, c(symbol)) of a stream of ids:
    memory is the distinct pairs, not the stream."""
    codes, counts = np.empty(0, np.int64), np.empty(0, np.float64)
    first, uni = np.zeros(vocab_size), np.zeros(vocab_size)
    for prev, nxt in _pairs(_tee_unigram(chunks, uni)):
        u, n = np.unique(prev * vocab_size + nxt, return_counts=True)
        allc = np.concatenate([codes, u])
        codes, inv = np.unique(allc, return_inverse=True)
        counts = np.bincount(inv, weights=np.concatenate([counts, n.astype(np.float64)]), minlength=len(codes))
        first += np.bincount(prev, minlength=vocab_size)
    return codes, counts, first, uni


def _tee_unigram(chunks: Iterable[np.ndarray], uni: np.ndarray) -> Iterator[np.ndarray]:
    for c in chunks:
        uni += np.bincount(np.asarray(c, dtype=np.int64), minlength=len(uni))
        yield c


def _loss(cond: np.ndarray, uni: np.ndarray, w: float) -> float:
    return float(-np.mean(np.log(w * cond + (1.0 - w) * uni)))


def bigram_weight(train: np.ndarray | Callable[[int, int], Iterable[np.ndarray]], vocab_size: int,
                  n: int | None = None) -> float:
    """The interpolation weight that best predicts the last 10% of train from its first 90%.
    `train`: the ids, or `read(start, stop)` giving the ids of [start, stop) in chunks (with `n`)."""
    read = train if callable(train) else (lambda a, b: chunks_of(train[a:b]))
    n = len(train) if n is None else n
    cut = int(n * 0.9)
    head = BigramTable.from_chunks(read(0, cut), vocab_size)
    sums, count = np.zeros(len(WEIGHTS)), 0
    for prev, nxt in _pairs(read(cut - 1, n)):
        for a in range(0, len(prev), TAIL_CHUNK):
            p, q = prev[a:a + TAIL_CHUNK], nxt[a:a + TAIL_CHUNK]
            cond, uni = head.probs(p, q), head.unigram[q]  # w = 1: the pure count ratio
            sums += np.log(WEIGHTS[:, None] * cond + (1.0 - WEIGHTS[:, None]) * uni).sum(axis=1)
            count += len(q)
    return float(WEIGHTS[int(np.argmin(-sums / max(count, 1)))])


def baselines(train: np.ndarray | Callable[[int, int], Iterable[np.ndarray]],
              splits: dict[str, np.ndarray | Callable[[], Iterable[np.ndarray]]], vocab_size: int,
              n_train: int | None = None) -> dict[str, float]:
    """`baseline_unigram_<split>_loss`, `baseline_bigram_<split>_loss` (nats/char) for each split,
    and the bigram's weight; each split scored on its characters after the first. Arrays, or
    readers of chunks (train: `read(start, stop)`; a split: `read()`): memory is a chunk."""
    read = train if callable(train) else (lambda a, b: chunks_of(train[a:b]))
    n_train = len(train) if n_train is None else n_train
    table = BigramTable.from_chunks(read(0, n_train), vocab_size, bigram_weight(read, vocab_size, n_train))
    out: dict[str, float] = {"baseline_bigram_weight": table.w}
    for split, ids in splits.items():
        chunks = ids() if callable(ids) else chunks_of(ids)
        uni_sum = bi_sum = 0.0
        count = 0
        for prev, nxt in _pairs(chunks):
            uni_sum += float(np.log(table.unigram[nxt]).sum())
            bi_sum += float(np.log(table.probs(prev, nxt)).sum())
            count += len(nxt)
        out[f"baseline_unigram_{split}_loss"] = -uni_sum / max(count, 1)
        out[f"baseline_bigram_{split}_loss"] = -bi_sum / max(count, 1)
    return out


class BigramTable:
    """The interpolated count bigram as a model part: p(b | a) = w * c(a, b) / c(a) + (1 - w) * p(b),
    the same estimate `baselines` scores, kept sparse (only the pairs train contains)."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, cond: np.ndarray, unigram: np.ndarray, w: float):
        self.rows, self.cols = rows.astype(np.int64), cols.astype(np.int64)
        self.cond, self.unigram, self.w = cond.astype(np.float64), unigram.astype(np.float64), float(w)

    @classmethod
    def from_chunks(cls, chunks: Iterable[np.ndarray], vocab_size: int, w: float = 1.0) -> BigramTable:
        """The table of a stream's pair counts with weight `w` (p(b) the add-one unigram)."""
        pairs, counts, first, uni = _counts(chunks, vocab_size)
        rows, cols = pairs // vocab_size, pairs % vocab_size
        return cls(rows, cols, counts / first[rows], (uni + 1.0) / (uni.sum() + vocab_size), w)

    @classmethod
    def counts(cls, train: np.ndarray, vocab_size: int, w: float = 1.0) -> BigramTable:
        """The table of `train`'s pair counts with weight `w`."""
        return cls.from_chunks(chunks_of(train), vocab_size, w)

    @classmethod
    def fit(cls, train: np.ndarray, vocab_size: int) -> BigramTable:
        """Counts over the whole train split; the weight chosen on train alone (`bigram_weight`)."""
        return cls.counts(train, vocab_size, bigram_weight(train, vocab_size))

    @classmethod
    def fit_stream(cls, read: Callable[[int, int], Iterable[np.ndarray]], n: int, vocab_size: int) -> BigramTable:
        """`fit` for a split read in chunks (`read(start, stop)`): memory is a chunk and the pairs."""
        return cls.from_chunks(read(0, n), vocab_size, bigram_weight(read, vocab_size, n))

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
