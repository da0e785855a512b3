import pyarrow as pa
import pytest

from components.data.parquet import (
    DOCS_SCHEMA,
    TOKENS_SCHEMA,
    DataError,
    atomic_path,
    check_table,
    file_sha256,
    staging_dir,
    write_table,
)
from components.workloads.char_lm.data import Vocab, split_text, tokens_table


def test_splits_are_contiguous_and_in_order():
    text = "".join(chr(65 + i % 26) for i in range(1000))
    s = split_text(text, 0.1, 0.05)
    assert s["train"] + s["val"] + s["test"] == text
    assert len(s["val"]) == 100 and len(s["test"]) == 50


def test_vocab_is_built_from_train_only():
    v = Vocab.build("abca")
    assert v.itos == ("<unk>", "a", "b", "c")
    ids = v.encode("abz")
    assert ids.tolist() == [1, 2, 0]  # z never seen in train -> <unk>
    assert v.decode([1, 2, 3]) == "abc"
    assert Vocab.build("aab", min_count=2).itos == ("<unk>", "a")


def test_same_input_gives_same_parquet_bytes(tmp_path):
    t = tokens_table(Vocab.build("hello world").encode("hello world" * 100))
    write_table(tmp_path / "a.parquet", t)
    write_table(tmp_path / "b.parquet", t)
    assert file_sha256(tmp_path / "a.parquet") == file_sha256(tmp_path / "b.parquet")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_staging_dir_publishes_whole_or_not_at_all(tmp_path):
    final = tmp_path / "out"
    with staging_dir(final) as d:
        (d / "a").write_text("1")
    assert (final / "a").read_text() == "1"
    with pytest.raises(RuntimeError), staging_dir(final) as d:
        (d / "b").write_text("2")
        raise RuntimeError("crash")
    assert sorted(p.name for p in final.iterdir()) == ["a"]  # the last good output stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.fixture
def written(tmp_path):
    path = tmp_path / "t.parquet"
    entry = write_table(path, tokens_table(Vocab.build("abc").encode("abcabc" * 5000)), row_group_size=1000)
    return path, entry


def test_check_table_accepts_the_written_file(written):
    path, entry = written
    assert check_table(path, TOKENS_SCHEMA, entry).metadata.num_rows == 30000


def test_check_table_catches_truncation(written):
    path, entry = written
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="sha256 differs"):
        check_table(path, TOKENS_SCHEMA, entry)
    with pytest.raises(DataError, match="not a readable Parquet file"):
        check_table(path, TOKENS_SCHEMA, {"rows": 30000})


def test_check_table_catches_zero_bytes_flips_schema_and_rows(written, tmp_path):
    path, entry = written
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        check_table(path, TOKENS_SCHEMA, entry)
    other = tmp_path / "docs.parquet"
    e2 = write_table(other, pa.Table.from_pylist([{"doc_id": "a", "text": "b"}], schema=DOCS_SCHEMA))
    with pytest.raises(DataError, match="schema"):
        check_table(other, TOKENS_SCHEMA, e2)
    with pytest.raises(DataError, match="1 rows, manifest says 5"):
        check_table(other, DOCS_SCHEMA, {"rows": 5})
    flipped = bytearray(other.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    other.write_bytes(bytes(flipped))
    with pytest.raises(DataError, match="sha256 differs"):
        check_table(other, DOCS_SCHEMA, e2)
    with pytest.raises(DataError, match="not found"):
        check_table(tmp_path / "nope.parquet", DOCS_SCHEMA)
