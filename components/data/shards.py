"""Sharding the token stream across workers, and the truncated-bptt window sampler.

The corpus of N tokens is cut into `bs` contiguous streams of L = N // bs tokens. Worker
`rank` of `world` owns streams [rank * bs/world, (rank+1) * bs/world), which are one
contiguous token range, and reads the windows of its streams as training reaches them
(`LazyStreams`): memory per worker is a chunk of every stream, not its share of the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from components.data.parquet import open_parquet, read_rows


def read_token_range(uri: str, start: int, stop: int) -> np.ndarray:
    """Tokens [start, stop) of a token Parquet file."""
    return read_rows(uri, start, stop, ["id"]).column("id").to_numpy().astype(np.int64)


class TokenFile:
    """A token split (a file, or the parts of a folder) opened once, read by token range: only the
    row groups that hold a range are read."""

    def __init__(self, uris: str | list[str] | tuple[str, ...]) -> None:
        self.files = [open_parquet(u) for u in ([uris] if isinstance(uris, str) else uris)]
        spans = [(f, g, f_pf.metadata.row_group(g).num_rows) for f, f_pf in enumerate(self.files)
                 for g in range(f_pf.metadata.num_row_groups)]
        self.groups = [(f, g) for f, g, _ in spans]
        self.starts = np.concatenate([[0], np.cumsum([n for _, _, n in spans])]).astype(np.int64)

    @property
    def rows(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) in the file's own integer type."""
        if stop <= start:
            return np.empty(0, dtype=np.int64)
        first = int(np.searchsorted(self.starts, start, side="right") - 1)
        last = int(np.searchsorted(self.starts, stop - 1, side="right") - 1)
        pieces = []
        for f in sorted({self.groups[i][0] for i in range(first, last + 1)}):
            groups = [self.groups[i][1] for i in range(first, last + 1) if self.groups[i][0] == f]
            pieces.append(self.files[f].read_row_groups(groups, columns=["id"], use_threads=False).column("id")
                          .to_numpy())
        col = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        base = int(self.starts[first])
        return col[start - base:stop - base]


class LazyStreams:
    """`n` contiguous streams of `length` tokens each, stream j starting at token `first + j * length`
    of a token file, sliced as the (length, n) int64 tensor they stand for (`streams[a:b]`) but
    read as the slices reach them: `chunk` positions of every stream at a time (all streams move
    together), so memory is `chunk x n` tokens, not the corpus. `mapping` (an array, old id ->
    new id) renumbers ids as they are read (another vocabulary)."""

    def __init__(self, uris: str | list[str] | tuple[str, ...], first: int, n: int, length: int,
                 chunk: int = 1 << 15, mapping: np.ndarray | None = None) -> None:
        self.file, self.first, self.n, self.length = TokenFile(uris), first, n, length
        self.chunk, self.mapping, self.device = max(2, chunk), mapping, torch.device("cpu")
        self.lo, self.hi, self.buf = 0, 0, torch.empty(0, n, dtype=torch.int64)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.length, self.n)

    def size(self, dim: int) -> int:
        return self.shape[dim]

    def to(self, device: torch.device | str) -> LazyStreams:
        """Slices come out on `device` (the buffer stays on the CPU)."""
        self.device = torch.device(device)
        return self

    def _load(self, a: int, b: int) -> None:
        hi = min(self.length, max(b + 1, a + self.chunk))  # one more: a window's targets are its inputs shifted by one
        cols = [self.file.read(self.first + j * self.length + a, self.first + j * self.length + hi)
                for j in range(self.n)]
        ids = np.stack(cols, axis=1).astype(np.int64)
        if self.mapping is not None:
            ids = self.mapping[ids]
        self.lo, self.hi, self.buf = a, hi, torch.from_numpy(ids)

    def __getitem__(self, sl: slice) -> torch.Tensor:
        a, b, _ = sl.indices(self.length)
        if b <= a:
            return torch.empty(0, self.n, dtype=torch.int64, device=self.device)
        if a < self.lo or b > self.hi:
            self._load(a, b)
        return self.buf[a - self.lo:b - self.lo].to(self.device)


def stream_bounds(n_tokens: int, bs: int, rank: int, world: int) -> tuple[int, int, int]:
    """(start token, stop token, stream length L) of this worker's streams."""
    if bs % world:
        raise ValueError(f"bs ({bs}) must be a multiple of the number of workers ({world})")
    length = n_tokens // bs
    if length < 2:
        raise ValueError(f"{n_tokens} tokens are too few for {bs} streams (need at least {2 * bs})")
    per = bs // world
    return rank * per * length, (rank + 1) * per * length, length


def worker_streams(split: str | dict, n_tokens: int, bs: int, rank: int, world: int,
                   chunk: int = 1 << 15) -> LazyStreams:
    """This worker's streams, (L, bs / world) as sliced: column j is one contiguous stream, read
    `chunk` positions at a time as training reaches them. `split`: a token file, or a split's
    parts (`{"uris": [...], ...}`)."""
    start, _, length = stream_bounds(n_tokens, bs, rank, world)
    return LazyStreams(split if isinstance(split, str) else split["uris"], start, bs // world, length, chunk)


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
