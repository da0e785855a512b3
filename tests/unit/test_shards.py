import numpy as np
import pytest
import torch

from components.data.parquet import TOKEN_ROW_GROUP, write_table
from components.data.shards import BpttSampler, read_token_range, stream_bounds, worker_streams
from components.workloads.char_lm.data import tokens_table


@pytest.fixture
def token_file(tmp_path):
    ids = (np.arange(200_003) % 60 + 1).astype(np.uint16)
    path = tmp_path / "train.parquet"
    write_table(path, tokens_table(ids), row_group_size=TOKEN_ROW_GROUP)
    return str(path), ids


def test_workers_split_the_streams_exactly(token_file):
    uri, ids = token_file
    bs, length = 8, len(ids) // 8
    full = torch.from_numpy(ids[: bs * length].astype(np.int64)).view(bs, length).t()  # (L, bs)
    lazy = [worker_streams(uri, len(ids), bs, r, 2, chunk=1000) for r in range(2)]
    assert [p.shape for p in lazy] == [(length, 4), (length, 4)]
    # read a window at a time, as training does: the same tokens as the whole grid
    for a in (0, 990, 13_000, length - 40):
        assert torch.equal(lazy[1][a:a + 33], full[a:a + 33, 4:]) and lazy[1].hi - lazy[1].lo <= 1001
    parts = [p[:] for p in lazy]
    assert torch.equal(torch.cat(parts, dim=1), full)
    # each column is one contiguous piece of the corpus
    assert torch.equal(parts[1][:, 0], full[:, 4])


def test_a_worker_reads_only_its_row_groups(token_file, monkeypatch):
    uri, ids = token_file
    import pyarrow.parquet as pq

    read = []
    orig = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups",
                        lambda self, groups, **kw: read.append(list(groups)) or orig(self, groups, **kw))
    got = read_token_range(uri, 70_000, 80_000)
    assert got.tolist() == ids[70_000:80_000].astype(np.int64).tolist()
    assert read == [[1]]  # rows 65,536..131,071 only, not the whole file


def test_stream_bounds_errors():
    with pytest.raises(ValueError, match="multiple of the number of workers"):
        stream_bounds(1000, 7, 0, 2)
    with pytest.raises(ValueError, match="too few for 64 streams"):
        stream_bounds(100, 64, 0, 2)


def test_sampler_lengths_follow_the_notes():
    s = BpttSampler(length=10_000_000, bptt=70, seed=1)
    lengths = [n for _, n in s.windows(max_steps=4000)]
    arr = np.array(lengths)
    assert arr.min() >= 5
    near_full = np.mean(np.abs(arr - 70) < 20)
    near_half = np.mean(np.abs(arr - 35) < 20)
    assert 0.92 < near_full < 0.98 and 0.02 < near_half < 0.08
    assert abs(np.std(arr[np.abs(arr - 70) < 20]) - 5) < 0.6


def test_sampler_is_the_same_on_every_rank_and_varies_by_epoch():
    a, b = BpttSampler(length=5000, bptt=64, seed=3), BpttSampler(length=5000, bptt=64, seed=3)
    ea, eb = list(a.windows()), list(b.windows())
    assert ea == eb
    assert list(a.windows()) != ea  # epoch 2 starts windows at other offsets


def test_full_pass_covers_every_target_once():
    s = BpttSampler(length=1000, bptt=30, seed=0)
    windows = list(s.windows())
    covered = [i for start, n in windows for i in range(start, start + n)]
    assert covered == list(range(999))  # every position with a next character, in order
    assert s.pos == 0 and s.epoch == 1


def test_capped_epochs_continue_and_resume_from_state():
    s = BpttSampler(length=10_000, bptt=20, seed=0)
    first = list(s.windows(max_steps=10))
    state = s.state_dict()
    nxt = list(s.windows(max_steps=10))
    assert nxt[0][0] == first[-1][0] + first[-1][1]  # continues where it stopped
    r = BpttSampler(length=10_000, bptt=20, seed=0)
    r.load_state_dict(state)
    assert list(r.windows(max_steps=10)) == nxt
