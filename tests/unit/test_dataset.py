"""Splits as folders of part files: bounded parts, a manifest DVC agrees with, checks that cost
O(1) in the data's size once a file has been verified, and damage named by the part."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from components.data import parquet
from components.data.dataset import PartWriter, data_digest, dvc_dir_md5, open_split, read_range
from components.data.parquet import DataError, write_json

SCHEMA = pa.schema([("x", pa.int64()), ("s", pa.string())])


def _write(folder, n=20_000, part_bytes=60_000, batch=1000):
    w = PartWriter(folder / "train", SCHEMA, part_bytes)
    rng = np.random.default_rng(0)  # random text: it does not compress away
    for a in range(0, n, batch):
        words = [rng.bytes(12).hex() for _ in range(batch)]
        w.write(pa.table({"x": np.arange(a, a + batch), "s": words}, schema=SCHEMA), row_group_size=500)
    entry = w.close()
    write_json(folder / "manifest.json", {"files": {"train": entry}})
    return entry


def test_parts_are_bounded_and_read_back_as_one_split(tmp_path):
    entry = _write(tmp_path)
    assert len(entry["parts"]) > 3 and entry["rows"] == 20_000
    assert all(p["bytes"] < 60_000 + 40_000 for p in entry["parts"])  # a part closes at the first batch past the size
    split = open_split(tmp_path, "train", {"files": {"train": entry}}, SCHEMA)
    assert split.rows == 20_000 and len(split.uris) == len(entry["parts"])
    t = read_range(split.as_data(), 4_321, 12_345, ["x"])
    assert t.column("x").to_pylist() == list(range(4_321, 12_345))
    assert _write(tmp_path / "again") == entry  # the same rows in the same batches: the same bytes


def test_the_folder_digest_is_the_one_dvc_records(tmp_path):
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    entry = _write(tmp_path)
    tree = Tree()
    for p in entry["parts"]:
        tree.add((p["file"],), Meta(size=p["bytes"]), HashInfo("md5", p["md5"]))
    tree.digest()
    assert entry["md5"] == dvc_dir_md5(entry["parts"]) == tree.hash_info.value
    assert data_digest(tmp_path, "train") == (entry["md5"], 20_000)


def test_a_start_checks_a_verified_part_without_reading_it(tmp_path, monkeypatch):
    entry = _write(tmp_path)
    cache = tmp_path / "verified"
    open_split(tmp_path, "train", {"files": {"train": entry}}, SCHEMA, cache)  # the first reader hashes once
    reads = []
    real = parquet.file_sha256
    monkeypatch.setattr(parquet, "file_sha256", lambda p: reads.append(p) or real(p))
    open_split(tmp_path, "train", {"files": {"train": entry}}, SCHEMA, cache)
    assert reads == []
    part = tmp_path / "train" / entry["parts"][1]["file"]
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF  # a byte flipped in place: same size, footer intact
    part.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{part}: sha256 differs from the manifest"):
        open_split(tmp_path, "train", {"files": {"train": entry}}, SCHEMA, cache)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.unlink(), "not found"),
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "bytes, the manifest says"),
    (lambda p: (p.parent / "part-99999.parquet").write_bytes(p.read_bytes()), "a part the manifest does not list"),
])
def test_a_part_missing_cut_short_or_extra_is_named(tmp_path, damage, message):
    entry = _write(tmp_path)
    part = tmp_path / "train" / entry["parts"][2]["file"]
    damage(part)
    with pytest.raises(DataError, match=message):
        open_split(tmp_path, "train", {"files": {"train": entry}}, SCHEMA)
