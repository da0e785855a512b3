"""A CSV a block of whole records at a time, from a local file or an object store's stream.

pyarrow's streaming CSV reader (`pyarrow.csv.open_csv`, and a dataset scan of a CSV) reads ahead
of its consumer, up to the whole file: its pool peaked at 96 MB on a 101 MB table and 38 MB on a
34 MB one, whatever the block size. Cutting the bytes into blocks of whole records here and
parsing each with `pyarrow.csv.read_csv` keeps a stage's memory at a block, at any size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

import numpy as np

BLOCK = 1 << 20  # bytes read at a time


def _last_record_end(data: bytes, quoted: bool) -> int:
    """The index just past the last newline in `data` that ends a record (0 if none): with
    `quoted`, a newline inside a quoted value (an odd number of quote marks before it, counted
    from a record's start; an escaped quote is two) does not end one."""
    if not quoted:
        return data.rfind(b"\n") + 1
    a = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(a == 10)
    if not len(newlines):
        return 0
    quotes_before = np.cumsum(a == 34)[newlines]
    ends = newlines[quotes_before % 2 == 0]
    return int(ends[-1]) + 1 if len(ends) else 0


def records(f: IO[bytes], quoted: bool = False, block: int = BLOCK) -> Iterator[bytes]:
    """The records of the CSV stream `f` after its header line, in blocks of about `block` bytes
    of whole records (a record longer than a block comes whole, in a larger one). `quoted`: values
    may hold newlines inside quotes. Only `read` is used: an object store's stream has no readline."""
    rest, in_header = b"", True
    while chunk := f.read(block):
        data = rest + chunk
        if in_header:
            cut = _first_record_end(data, quoted)
            if not cut:
                rest = data
                continue
            data, in_header = data[cut:], False
        cut = _last_record_end(data, quoted)
        if cut:
            yield data[:cut]
        rest = data[cut:]
    if rest.strip() and not in_header:
        yield rest


def _first_record_end(data: bytes, quoted: bool) -> int:
    """The index just past the first newline that ends a record (the header's), 0 if none yet."""
    if not quoted:
        return data.find(b"\n") + 1
    a = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(a == 10)
    ends = newlines[np.cumsum(a == 34)[newlines] % 2 == 0] if len(newlines) else newlines
    return int(ends[0]) + 1 if len(ends) else 0
