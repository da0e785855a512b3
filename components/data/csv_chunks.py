"""A CSV a block of whole records at a time, from a local file or an object store's stream.

pyarrow's streaming CSV reader (`pyarrow.csv.open_csv`, and a dataset scan of a CSV) reads ahead
of its consumer, up to the whole file: its pool peaked at 96 MB on a 101 MB table and 38 MB on a
34 MB one, whatever the block size. Cutting the bytes into blocks of whole records here and
parsing each with `pyarrow.csv.read_csv` (`read_blocks`) keeps a stage's memory at a block, at
any size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

import numpy as np

BLOCK = 1 << 20  # bytes read at a time


def _record_ends(data: bytes) -> np.ndarray:
    """The indices just past each newline in `data` that ends a record: not one inside a quoted
    value (an odd number of quote marks before it, counted from a record's start; an escaped
    quote is two, so the count stays even)."""
    a = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(a == 10)
    if not len(newlines):
        return newlines
    return newlines[np.cumsum(a == 34)[newlines] % 2 == 0] + 1


def records(f: IO[bytes], block: int = BLOCK) -> Iterator[bytes]:
    """The records of the CSV stream `f` after its header, in blocks of about `block` bytes of
    whole records (a record longer than a block comes whole, in a larger one); a newline inside a
    quoted value stays in its record. Only `read` is used: an object store's stream has no readline."""
    rest, in_header = b"", True
    while chunk := f.read(block):
        data = rest + chunk
        ends = _record_ends(data)
        if in_header:
            if not len(ends):
                rest = data
                continue
            data, ends, in_header = data[ends[0]:], ends[1:] - ends[0], False
        cut = int(ends[-1]) if len(ends) else 0
        if cut:
            yield data[:cut]
        rest = data[cut:]
    if rest.strip() and not in_header:
        yield rest


def read_blocks(f: IO[bytes], names: list[str], parse: Any, convert: Any) -> Iterator[Any]:
    """The CSV stream `f` (its header line skipped; `names` its columns) as pyarrow Tables, one per
    block of `records`, parsed with these `pyarrow.csv` parse and convert options (give the
    columns' types: a block alone would infer its own). pyarrow's ArrowInvalid passes through,
    its row numbers counted from the block's first record, as 1."""
    import pyarrow as pa
    import pyarrow.csv as pc

    for chunk in records(f):
        # a parse block as large as the chunk: a record is never split between two
        read = pc.ReadOptions(column_names=names, use_threads=False, block_size=max(1 << 22, len(chunk) + 1))
        yield pc.read_csv(pa.BufferReader(chunk), read_options=read, parse_options=parse, convert_options=convert)
