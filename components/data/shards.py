"""Sharding the token stream across workers, and the truncated-bptt window sampler.

The corpus of N tokens is cut into `bs` contiguous streams of L = N // bs tokens. Worker
`rank` of `world` owns streams [rank * bs/world, (rank+1) * bs/world), which are one
contiguous token range, and reads only the Parquet row groups that cover it: memory per
worker is O(N / world).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch


def open_parquet(uri: str) -> pq.ParquetFile:
    """Open a Parquet file by local path or any URI pyarrow understands (s3://, gs://, ...)."""
    fs, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)
    return pq.ParquetFile(fs.open_input_file(path))


def read_rows(uri: str, start: int, stop: int, columns: list[str] | None = None):
    """Rows [start, stop) of a Parquet file as a pyarrow Table, reading only the row groups
    that hold them (a worker's shard, not the file)."""
    pf = open_parquet(uri)
    md = pf.metadata
    groups, first_row, row = [], None, 0
    for g in range(md.num_row_groups):
        n = md.row_group(g).num_rows
        if row + n > start and row < stop:
            groups.append(g)
            first_row = row if first_row is None else first_row
        row += n
    if not groups:
        return pf.schema_arrow.empty_table().select(columns) if columns else pf.schema_arrow.empty_table()
    return pf.read_row_groups(groups, columns=columns).slice(start - first_row, stop - start)


def read_token_range(uri: str, start: int, stop: int) -> np.ndarray:
    """Tokens [start, stop) of a token Parquet file."""
    return read_rows(uri, start, stop, ["id"]).column("id").to_numpy().astype(np.int64)


def row_shard(n_rows: int, rank: int, world: int) -> tuple[int, int]:
    """This worker's contiguous [start, stop) of `n_rows`; shard sizes differ by at most one."""
    return rank * n_rows // world, (rank + 1) * n_rows // world


def stream_bounds(n_tokens: int, bs: int, rank: int, world: int) -> tuple[int, int, int]:
    """(start token, stop token, stream length L) of this worker's streams."""
    if bs % world:
        raise ValueError(f"bs ({bs}) must be a multiple of the number of workers ({world})")
    length = n_tokens // bs
    if length < 2:
        raise ValueError(f"{n_tokens} tokens are too few for {bs} streams (need at least {2 * bs})")
    per = bs // world
    return rank * per * length, (rank + 1) * per * length, length


def worker_streams(uri: str, n_tokens: int, bs: int, rank: int, world: int) -> torch.Tensor:
    """This worker's streams as a (L, bs / world) int64 tensor: column j is one contiguous stream."""
    start, stop, length = stream_bounds(n_tokens, bs, rank, world)
    ids = read_token_range(uri, start, stop)
    return torch.from_numpy(ids).view(-1, length).t().contiguous()  # (L, bs_local)


@dataclass
class BpttSampler:
    """Window lengths for truncated bptt, as in the fast.ai notes: `bptt` with probability
    0.95, else `bptt / 2`, plus normal noise (sd 5, minimum 5) when `variable`, so windows
    start at different offsets every epoch. Every rank seeds it the same way, so all ranks
    draw the same lengths and stop on the same step (DDP's all-reduce never waits).

    State (`pos`, `epoch`) is checkpointed; an epoch's draws depend only on (seed, epoch).
    """

    length: int  # L: tokens per stream
    bptt: int
    seed: int = 0
    variable: bool = True
    pos: int = 0
    epoch: int = 0

    def windows(self, max_steps: int | None = None):
        """Yield (start, seq_len) for one epoch: a full pass, or `max_steps` windows that
        continue from where the last epoch stopped (wrapping to the start of the streams)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        steps = 0
        while max_steps is None or steps < max_steps:
            if self.pos >= self.length - 1:
                if max_steps is None:
                    break
                self.pos = 0  # wrap: a new pass over the streams
            if self.variable:
                base = self.bptt if rng.random() < 0.95 else self.bptt / 2
                seq_len = max(5, int(rng.normal(base, 5)))
            else:
                seq_len = self.bptt
            seq_len = min(seq_len, self.length - 1 - self.pos)
            yield self.pos, seq_len
            self.pos += seq_len
            steps += 1
        self.epoch += 1
        if max_steps is None:
            self.pos = 0

    def state_dict(self) -> dict:
        return {"pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.epoch = int(state["pos"]), int(state["epoch"])
