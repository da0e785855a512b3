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


class PairCounts:
    """Counts of a stream of ids, added pair by pair: the sorted pair codes a * V + b and their
    counts, c(a) as a first symbol, c(b) as a symbol. Memory is the distinct pairs, not the stream."""

    def __init__(self, vocab_size: int) -> None:
        self.v = vocab_size
        self.codes, self.counts = np.empty(0, np.int64), np.empty(0, np.float64)
        self.first, self.uni = np.zeros(vocab_size), np.zeros(vocab_size)

    def add(self, prev: np.ndarray, nxt: np.ndarray) -> None:
        """Pairs (prev[i], nxt[i]); every `nxt` counts as a symbol (a stream's first symbol: `add_symbol`)."""
        u, n = np.unique(prev * self.v + nxt, return_counts=True)
        self.codes, inv = np.unique(np.concatenate([self.codes, u]), return_inverse=True)
        self.counts = np.bincount(inv, weights=np.concatenate([self.counts, n.astype(np.float64)]),
                                  minlength=len(self.codes))
        self.first += np.bincount(prev, minlength=self.v)
        self.uni += np.bincount(nxt, minlength=self.v)

    def add_symbol(self, ids: np.ndarray) -> None:
        self.uni += np.bincount(np.asarray(ids, dtype=np.int64), minlength=self.v)

    def merged(self, other: PairCounts) -> PairCounts:
        """The counts of both streams, one after the other (the pair across them counted by `other`)."""
        out = PairCounts(self.v)
        out.codes, inv = np.unique(np.concatenate([self.codes, other.codes]), return_inverse=True)
        out.counts = np.bincount(inv, weights=np.concatenate([self.counts, other.counts]), minlength=len(out.codes))
        out.first, out.uni = self.first + other.first, self.uni + other.uni
        return out

    def table(self, w: float = 1.0) -> BigramTable:
        rows, cols = self.codes // self.v, self.codes % self.v
        return BigramTable(rows, cols, self.counts / self.first[rows], (self.uni + 1.0) / (self.uni.sum() + self.v), w)


def _count(chunks: Iterable[np.ndarray], vocab_size: int) -> PairCounts:
    """`PairCounts` of a stream read in chunks (its first symbol counted once, as every other)."""
    counts, carry = PairCounts(vocab_size), None
    for c in chunks:
        c = np.asarray(c, dtype=np.int64)
        if not len(c):
            continue
        if carry is None:
            counts.add_symbol(c[:1])
            both = c
        else:
            both = np.concatenate([carry, c])
        if len(both) > 1:
            counts.add(both[:-1], both[1:])
        carry = c[-1:]
    return counts


def fit_stream(read: Callable[[int, int], Iterable[np.ndarray]], n: int, vocab_size: int) -> BigramTable:
    """The bigram of train read in chunks (`read(start, stop)`), in two passes: counts over its
    first 90%; then its last 10% scored against them at every weight in `WEIGHTS` (the weight is
    chosen on train alone) while its own pairs are counted, and the two counts added: the table of
    the whole split, with that weight, without a third pass."""
    cut = int(n * 0.9)
    head = _count(read(0, cut), vocab_size)
    scorer, tail = head.table(), PairCounts(vocab_size)
    sums, count = np.zeros(len(WEIGHTS)), 0
    for prev, nxt in _pairs(read(cut - 1, n)):
        tail.add(prev, nxt)
        for a in range(0, len(prev), TAIL_CHUNK):
            p, q = prev[a:a + TAIL_CHUNK], nxt[a:a + TAIL_CHUNK]
            cond, uni = scorer.probs(p, q), scorer.unigram[q]  # w = 1: the pure count ratio
            sums += np.log(WEIGHTS[:, None] * cond + (1.0 - WEIGHTS[:, None]) * uni).sum(axis=1)
            count += len(q)
    w = float(WEIGHTS[int(np.argmin(-sums / max(count, 1)))])
    return head.merged(tail).table(w)


def bigram_weight(train: np.ndarray | Callable[[int, int], Iterable[np.ndarray]], vocab_size: int,
                  n: int | None = None) -> float:
    """The interpolation weight that best predicts the last 10% of train from its first 90%.
    `train`: the ids, or `read(start, stop)` giving the ids of [start, stop) in chunks (with `n`)."""
    read = train if callable(train) else (lambda a, b: chunks_of(train[a:b]))
    return fit_stream(read, len(train) if n is None else n, vocab_size).w


def baselines(train: np.ndarray | Callable[[int, int], Iterable[np.ndarray]],
              splits: dict[str, np.ndarray | Callable[[], Iterable[np.ndarray]]], vocab_size: int,
              n_train: int | None = None) -> dict[str, float]:
    """`baseline_unigram_<split>_loss`, `baseline_bigram_<split>_loss` (nats/char) for each split,
    and the bigram's weight; each split scored on its characters after the first. Arrays, or
    readers of chunks (train: `read(start, stop)`; a split: `read()`): memory is a chunk."""
    read = train if callable(train) else (lambda a, b: chunks_of(train[a:b]))
    table = fit_stream(read, len(train) if n_train is None else n_train, vocab_size)
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
        return _count(chunks, vocab_size).table(w)

    @classmethod
    def counts(cls, train: np.ndarray, vocab_size: int, w: float = 1.0) -> BigramTable:
        """The table of `train`'s pair counts with weight `w`."""
        return cls.from_chunks(chunks_of(train), vocab_size, w)

    @classmethod
    def fit(cls, train: np.ndarray, vocab_size: int) -> BigramTable:
        """Counts over the whole train split; the weight chosen on train alone (`fit_stream`)."""
        return fit_stream(lambda a, b: chunks_of(train[a:b]), len(train), vocab_size)

    @classmethod
    def fit_stream(cls, read: Callable[[int, int], Iterable[np.ndarray]], n: int, vocab_size: int) -> BigramTable:
        """`fit` for a split read in chunks (`read(start, stop)`): memory is a chunk and the pairs."""
        return fit_stream(read, n, vocab_size)

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
