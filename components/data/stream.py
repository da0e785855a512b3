"""Reading a worker's rows lazily: which rows a rank reads in an epoch and in what order, and
batches of them prepared on a background thread, a bounded number ahead.

The order follows from (seed, epoch, rank) and the file's row groups alone, never from timing,
so a run started again at step `s` of an epoch reads exactly the batches the first run would
have read from there (a preemption checkpoint records only the step):

- a rank's shard is a contiguous row range (`row_shard`), which covers a run of row groups;
- each epoch visits those row groups ("blocks") in a seeded order, `buffer` blocks at a time
  (a window), and shuffles the rows within each window (a block shuffle, as Mosaic's streaming
  datasets and tf.data do: memory is a window, not the shard);
- each window's shuffle is drawn from its own generator, seeded by (seed, epoch, rank, window),
  so any position is reached without replaying the draws before it;
- an epoch asking for more rows than the shard holds goes round it again in the same order
  (as `DistributedSampler` pads), so every rank takes the same number of steps.

Prepare writes rows in a seeded random order, so a row group is already a random sample of the
data; the block shuffle mixes them further.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.data.parquet import open_parquet


def group_rows(pf: pq.ParquetFile) -> list[int]:
    """Rows in each row group of an open Parquet file (from its footer: nothing else is read)."""
    md = pf.metadata
    return [md.row_group(g).num_rows for g in range(md.num_row_groups)]


def as_split(data: str | dict[str, Any]) -> dict[str, Any]:
    """A split as workers are given it, `{"uris": [...], "rows": [...]}` (its parts); a lone file's path too."""
    if isinstance(data, str):
        return {"uris": [data], "rows": [open_parquet(data).metadata.num_rows]}
    return data


@dataclass(frozen=True)
class Block:
    """Rows [lo, hi) of the split (row numbers across its parts), all inside row group `group` of
    part `part`, which starts at split row `first`."""

    part: int
    group: int
    first: int
    lo: int
    hi: int

    @property
    def rows(self) -> int:
        return self.hi - self.lo


def shard_blocks(rows_per_group: list[int], start: int, stop: int, part: int = 0, offset: int = 0) -> list[Block]:
    """The parts of one file's row groups that hold split rows [start, stop), in file order (the
    file's rows start at split row `offset`)."""
    out, first = [], offset
    for g, n in enumerate(rows_per_group):
        lo, hi = max(start, first), min(stop, first + n)
        if lo < hi:
            out.append(Block(part, g, first, lo, hi))
        first += n
    return out


class EpochOrder:
    """The rows one rank reads in one epoch, in order: its blocks in a seeded order, `buffer`
    at a time, rows shuffled within each window; `shuffle=False`: file order (val, test)."""

    def __init__(self, blocks: list[Block], seed: int, epoch: int, rank: int, buffer: int = 4,
                 shuffle: bool = True) -> None:
        self.seed, self.epoch, self.rank, self.shuffle = seed, epoch, rank, shuffle
        order = (np.random.default_rng([seed, epoch, rank, 0x5EED]).permutation(len(blocks))
                 if shuffle else np.arange(len(blocks)))
        per = max(1, buffer) if shuffle else 1
        self.windows = [[blocks[int(i)] for i in order[k:k + per]] for k in range(0, len(blocks), per)]
        sizes = [sum(b.rows for b in w) for w in self.windows]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.rows = int(self.starts[-1])

    def window_rows(self, w: int) -> np.ndarray:
        """Window `w`'s rows (file row numbers) in the order they are read."""
        rows = np.concatenate([np.arange(b.lo, b.hi, dtype=np.int64) for b in self.windows[w]])
        if self.shuffle:
            rows = rows[np.random.default_rng([self.seed, self.epoch, self.rank, w]).permutation(len(rows))]
        return rows

    def locate(self, position: int) -> tuple[int, int]:
        """(window, offset in it) of the `position`-th row read (going round the shard again past its end)."""
        q = position % self.rows
        w = int(np.searchsorted(self.starts, q, side="right") - 1)
        return w, q - int(self.starts[w])


class WindowReader:
    """Reads one window's row groups (only the columns asked for) and hands out rows by split row number."""

    def __init__(self, uris: list[str], columns: list[str] | None) -> None:
        self.uris, self.columns = uris, columns
        self.files: dict[int, pq.ParquetFile] = {}
        self.key: tuple[tuple[int, int], ...] | None = None
        self.table: pa.Table | None = None
        self.offsets: dict[tuple[int, int], tuple[int, int]] = {}

    def _file(self, part: int) -> pq.ParquetFile:
        if part not in self.files:
            self.files[part] = open_parquet(self.uris[part])
        return self.files[part]

    def load(self, blocks: list[Block]) -> None:
        key = tuple(sorted({(b.part, b.group) for b in blocks}))
        if key == self.key:
            return
        self.table, self.key, self.offsets, at = None, key, {}, 0  # the old window goes first: one in memory
        firsts = {(b.part, b.group): b.first for b in blocks}
        tables = []
        for part in sorted({k[0] for k in key}):
            groups = [g for p, g in key if p == part]
            pf = self._file(part)
            tables.append(pf.read_row_groups(groups, columns=self.columns, use_threads=False))
            for g in groups:
                self.offsets[(part, g)] = (firsts[(part, g)], at)
                at += pf.metadata.row_group(g).num_rows
        self.table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def take(self, rows: np.ndarray, blocks: list[Block]) -> pa.Table:
        """Rows (split row numbers, all in `blocks`) as a table, in the order given."""
        local = np.empty(len(rows), dtype=np.int64)
        for b in blocks:
            first, at = self.offsets[(b.part, b.group)]
            sel = (rows >= b.lo) & (rows < b.hi)
            local[sel] = rows[sel] - first + at
        return self.table.take(pa.array(local))


_DONE = object()


class BatchStream:
    """Batches of `bs` rows of an `EpochOrder`, steps `first` to `steps`, each made by
    `make(table, step)` on a background thread, at most `prefetch` ahead: reading and decoding
    overlap training, and memory is a window plus `prefetch` batches. With `pad=False` the
    stream ends with the shard (the last batch short): for scoring val and test."""

    def __init__(self, split: str | dict[str, Any], order: EpochOrder, bs: int, steps: int | None,
                 make: Callable[[pa.Table, int], Any], first: int = 0, columns: list[str] | None = None,
                 prefetch: int = 2, pad: bool = True) -> None:
        self.uris = as_split(split)["uris"]
        self.order, self.bs, self.make, self.first = order, bs, make, first
        self.steps = steps if pad else -(-order.rows // bs)
        self.pad, self.columns, self.prefetch = pad, columns, max(1, prefetch)

    def _batches(self) -> Iterator[tuple[int, pa.Table]]:
        reader = WindowReader(self.uris, self.columns)
        order, bs = self.order, self.bs
        cached: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))
        for step in range(self.first, self.steps):
            start = step * bs
            stop = start + bs if self.pad else min(start + bs, order.rows)
            pieces, pos = [], start
            while pos < stop:
                w, off = order.locate(pos)
                if cached[0] != w:
                    cached = (w, order.window_rows(w))
                rows = cached[1]
                take = min(stop - pos, len(rows) - off)
                blocks = order.windows[w]
                reader.load(blocks)
                pieces.append(reader.take(rows[off:off + take], blocks))
                pos += take
            yield step, pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)

    def __iter__(self) -> Iterator[Any]:
        if self.order.rows == 0:
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for step, table in self._batches():
                    if not put(self.make(table, step)):
                        return
                put(_DONE)
            except BaseException as err:  # handed to the training loop, which raises it
                put(err)

        t = threading.Thread(target=produce, name=f"batches-{self.order.rank}", daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            t.join(timeout=10)


def row_shard(n_rows: int, rank: int, world: int) -> tuple[int, int]:
    """This worker's contiguous [start, stop) of `n_rows`; shard sizes differ by at most one."""
    return rank * n_rows // world, (rank + 1) * n_rows // world


def rank_blocks(split: str | dict[str, Any], n_rows: int, rank: int, world: int) -> tuple[list[Block], int]:
    """This rank's contiguous shard of the first `n_rows` rows of a split, as blocks of its parts'
    row groups (only the footers of the parts it touches are read), and its row count."""
    split = as_split(split)
    start, stop = row_shard(n_rows, rank, world)
    blocks, offset = [], 0
    for part, (uri, rows) in enumerate(zip(split["uris"], split["rows"], strict=True)):
        if offset < stop and offset + rows > start:
            blocks += shard_blocks(group_rows(open_parquet(uri)), start, stop, part, offset)
        offset += rows
    return blocks, stop - start
