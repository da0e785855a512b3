"""A worker's rows, streamed: the order follows from (seed, epoch, rank) and the file's row
groups alone, a resumed stream reads what the first one read from there, and memory is a window."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.data.stream import BatchStream, EpochOrder, rank_blocks, shard_blocks


@pytest.fixture
def rows_file(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"i": np.arange(95, dtype=np.int64)}), path, row_group_size=10)
    return str(path)


def _ids(uri: str, order: EpochOrder, bs: int, steps: int | None, first: int = 0, pad: bool = True) -> list[list[int]]:
    return list(BatchStream(uri, order, bs, steps, lambda t, s: t.column("i").to_pylist(), first=first, pad=pad))


def test_an_epoch_visits_every_row_of_the_shard_once_in_a_seeded_order(rows_file):
    blocks, n = rank_blocks(rows_file, 95, 1, 2)  # rows 47..94: parts of 6 row groups
    assert n == 48 and blocks[0].lo == 47 and blocks[0].group == 4 and blocks[-1].hi == 95
    order = EpochOrder(blocks, seed=3, epoch=0, rank=1, buffer=2)
    got = sum(_ids(rows_file, order, 8, 6), [])
    assert sorted(got) == list(range(47, 95)) and got != sorted(got)
    assert got == sum(_ids(rows_file, EpochOrder(blocks, 3, 0, 1, 2), 8, 6), [])  # same inputs, same order
    assert got != sum(_ids(rows_file, EpochOrder(blocks, 3, 1, 1, 2), 8, 6), [])  # a new epoch, a new order
    assert got != sum(_ids(rows_file, EpochOrder(blocks, 4, 0, 1, 2), 8, 6), [])  # a new seed too


def test_a_stream_started_at_a_step_reads_what_the_whole_one_read_from_there(rows_file):
    blocks, _ = rank_blocks(rows_file, 95, 0, 1)
    order = EpochOrder(blocks, seed=0, epoch=2, rank=0, buffer=3)
    whole = _ids(rows_file, order, 7, 20)  # 140 rows from 95: round the shard again, as DistributedSampler pads
    assert len(whole) == 20 and all(len(b) == 7 for b in whole)
    flat = sum(whole, [])
    assert flat[95:] == flat[:45]  # the second round repeats the first
    for first in (1, 9, 13, 19):
        assert _ids(rows_file, EpochOrder(blocks, 0, 2, 0, 3), 7, 20, first=first) == whole[first:]


def test_val_is_read_in_file_order_to_its_end(rows_file):
    blocks, _ = rank_blocks(rows_file, 95, 0, 1)
    got = _ids(rows_file, EpochOrder(blocks, 0, 0, 0, shuffle=False), 16, None, pad=False)
    assert sum(got, []) == list(range(95)) and [len(b) for b in got] == [16] * 5 + [15]


def test_a_window_is_all_that_is_read_at_once(rows_file, monkeypatch):
    reads: list[list[int]] = []
    real = pq.ParquetFile.read_row_groups

    def spy(self, groups, *a, **kw):
        reads.append(list(groups))
        return real(self, groups, *a, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    blocks = shard_blocks([10] * 9 + [5], 0, 95)
    _ids(rows_file, EpochOrder(blocks, 0, 0, 0, buffer=2), 5, 19)
    assert reads and max(len(r) for r in reads) == 2 and len(reads) == 5  # 10 groups, 2 at a time, each read once


def test_an_error_while_reading_reaches_the_training_loop(rows_file):
    blocks, _ = rank_blocks(rows_file, 95, 0, 1)

    def bad(table, step):
        if step == 2:
            raise ValueError("row 17: no such image")
        return step

    with pytest.raises(ValueError, match="no such image"):
        list(BatchStream(rows_file, EpochOrder(blocks, 0, 0, 0), 4, 6, bad))
