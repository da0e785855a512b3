"""`components/data/csv_chunks.py`: a CSV cut into blocks of whole records parses to the same
rows as the file whole, whatever the block size, with newlines and quotes inside values."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.csv as pc
import pytest

from components.data.csv_chunks import records

TEXT = ('text,label\n"a line\nand another",x\nplain,y\n"she said ""hi""\n, then left",x\n'
        '"",y\n"ends with a newline\n",z\nlast,x')


@pytest.mark.parametrize("block", [1, 3, 7, 16, 1 << 20])
def test_blocks_of_whole_records_parse_to_the_rows_of_the_whole_file(block):
    parse = pc.ParseOptions(newlines_in_values=True)
    convert = pc.ConvertOptions(column_types={"text": pa.string(), "label": pa.string()})  # as the stages set them
    whole = pc.read_csv(io.BytesIO(TEXT.encode()), parse_options=parse, convert_options=convert)
    chunks = list(records(io.BytesIO(TEXT.encode()), block=block))
    read = pc.ReadOptions(column_names=["text", "label"])
    parts = [pc.read_csv(pa.BufferReader(c), read_options=read, parse_options=parse, convert_options=convert)
             for c in chunks]
    assert whole.num_rows == 6 and pa.concat_tables(parts).equals(whole)
    if block == 1:
        assert len(chunks) == 6  # a block of a byte: each record comes whole, on its own


def test_a_header_alone_or_nothing_gives_no_records():
    assert list(records(io.BytesIO(b"a,b\n"), block=2)) == []
    assert list(records(io.BytesIO(b""))) == []
    assert list(records(io.BytesIO(b"a,b\n1,2"), block=3)) == [b"1,2"]
