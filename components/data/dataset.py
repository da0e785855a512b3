"""A split as a folder of Parquet part files: written as the data streams, read part by part.

    data/<w>/normalized/train/part-00000.parquet, part-00001.parquet, ...

Each part is at most about `part_mb` (DVC then tracks a few large files, not millions of small
ones, and an object store serves each in parallel ranges), in row groups of bounded size (the
unit a worker reads). The manifest entry of a split lists its parts with their rows, bytes,
sha256 and md5, and the split's DVC digest (the md5 `dvc.lock` records for the folder), all
computed once, when the part is written; a reader checks a part's footer, size and rows (O(1)
in its size) and its sha256 once per file and stat (`sha256_matches`), so a stage's start does
not read the data it is about to read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.data.parquet import DataError, sha256_matches

PART_MB = 192  # the default size of a part file


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256, md5) of a file, in one pass."""
    sha, md5 = hashlib.sha256(), hashlib.md5()  # noqa: S324 (md5: DVC's content address)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def dvc_dir_md5(parts: list[dict[str, Any]]) -> str:
    """The md5 DVC 3 records for a folder holding these files (`dvc_data`'s Tree.digest: the md5
    of the sorted JSON list of each file's md5 and relative path, with `.dir` appended)."""
    entries = sorted(({"md5": p["md5"], "relpath": p["file"]} for p in parts), key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"  # noqa: S324


class PartWriter:
    """Rows of one split, appended as they come (`write`), into `folder/part-NNNNN.parquet`: a new
    part once the current one reaches `part_bytes`. Fixed writer options, so the same rows in
    the same batches give the same bytes. `close` gives the manifest entry."""

    def __init__(self, folder: Path, schema: pa.Schema, part_bytes: int = PART_MB << 20) -> None:
        self.folder, self.schema, self.part_bytes = Path(folder), schema, max(1, part_bytes)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.parts: list[dict[str, Any]] = []
        self.sink: pa.OSFile | None = None
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def _open(self) -> None:
        name = f"part-{len(self.parts):05d}.parquet"
        self.sink = pa.OSFile(str(self.folder / name), "wb")
        self.writer = pq.ParquetWriter(self.sink, self.schema, compression="zstd", write_statistics=True,
                                       use_dictionary=True)
        self.parts.append({"file": name, "rows": 0})

    def _seal(self) -> None:
        self.writer.close()
        self.sink.close()
        part = self.parts[-1]
        path = self.folder / part["file"]
        part["bytes"] = path.stat().st_size
        part["sha256"], part["md5"] = file_digests(path)
        self.writer = self.sink = None

    def write(self, table: pa.Table, row_group_size: int | None = None) -> None:
        """Append `table`'s rows (a row group each `row_group_size` rows, else one)."""
        if table.num_rows == 0:
            return
        if self.writer is None:
            self._open()
        self.writer.write_table(table, row_group_size=row_group_size or table.num_rows)
        self.parts[-1]["rows"] += table.num_rows
        self.rows += table.num_rows
        if self.sink.tell() >= self.part_bytes:
            self._seal()

    def close(self) -> dict[str, Any]:
        """Seal the last part; the split's manifest entry (rows, parts, the folder's DVC digest)."""
        if self.writer is not None:
            self._seal()
        return {"rows": self.rows, "parts": self.parts, "md5": dvc_dir_md5(self.parts)}


@dataclass(frozen=True)
class Split:
    """A checked split: where its parts are (paths or URIs), their row counts, and its digest."""

    name: str
    uris: tuple[str, ...]
    part_rows: tuple[int, ...]
    md5: str

    @property
    def rows(self) -> int:
        return sum(self.part_rows)

    def as_data(self) -> dict[str, Any]:
        """What a worker is given of it: `{"uris": [...], "rows": [...]}` (JSON-able)."""
        return {"uris": list(self.uris), "rows": list(self.part_rows)}


def split_entry(manifest: dict[str, Any], split: str) -> dict[str, Any]:
    """A split's manifest entry; a clear error when the manifest has none (an older layout)."""
    files = manifest.get("files", {})
    if split not in files or "parts" not in files[split]:
        raise DataError(f"the manifest has no split {split!r} in parts (written by an older normalize? "
                        "run `dvc repro` to write the data again)")
    return files[split]


def open_split(folder: str | Path, split: str, manifest: dict[str, Any], schema: pa.Schema,
               cache: Path | None = None) -> Split:
    """Check a split's parts against the manifest: each there, of its size, its footer's schema and
    rows as recorded (O(1) a part), its sha256 once per file and stat when `cache` is given
    (else read now); then the split, ready to read."""
    entry = split_entry(manifest, split)
    base = Path(folder) / split
    uris, rows = [], []
    for part in entry["parts"]:
        path = base / part["file"]
        if not path.is_file():
            raise DataError(f"{path}: not found ({split} has {len(entry['parts'])} parts; run the stage that "
                            "writes it, or `dvc checkout`)")
        size = path.stat().st_size
        if size != part["bytes"]:
            raise DataError(f"{path}: {size} bytes, the manifest says {part['bytes']}: cut short or changed after "
                            "it was written")
        try:
            md = pq.read_metadata(path)
            got_schema = pq.read_schema(path)
        except Exception as err:  # pyarrow raises several types for a damaged footer
            raise DataError(f"{path}: not a readable Parquet file ({err})") from None
        if not got_schema.equals(schema):
            raise DataError(f"{path}: schema {got_schema} differs from the expected {schema}")
        if md.num_rows != part["rows"]:
            raise DataError(f"{path}: {md.num_rows} rows, the manifest says {part['rows']}")
        if not sha256_matches(path, part["sha256"], cache):
            raise DataError(f"{path}: sha256 differs from the manifest: the file changed after it was written")
        uris.append(str(path.resolve()))
        rows.append(part["rows"])
    extra = sorted(p.name for p in base.glob("*.parquet") if p.name not in {q["file"] for q in entry["parts"]})
    if extra:
        raise DataError(f"{base / extra[0]}: a part the manifest does not list")
    return Split(split, tuple(uris), tuple(rows), entry.get("md5", ""))


def iter_batches(uris: list[str] | tuple[str, ...], batch_size: int, columns: list[str] | None = None
                 ) -> Iterator[pa.RecordBatch]:
    """Every row of the parts in order, `batch_size` rows at a time (a batch never spans two row
    groups). A row group is read at a time: pyarrow's own `iter_batches` reads ahead, up to the
    whole file (its memory pool peaked at 94 MB on a 79 MB part of 4 MB row groups, 22 MB this way)."""
    from components.data.parquet import open_parquet

    for uri in uris:
        pf = open_parquet(uri)
        for g in range(pf.metadata.num_row_groups):
            yield from pf.read_row_group(g, columns=columns, use_threads=False).to_batches(max_chunksize=batch_size)


def read_range(split: dict[str, Any] | str, start: int, stop: int, columns: list[str] | None = None) -> pa.Table:
    """Rows [start, stop) of a split (its parts, `{"uris", "rows"}`, or a lone file), reading only
    the row groups that hold them."""
    from components.data.parquet import read_rows

    if isinstance(split, str):
        return read_rows(split, start, stop, columns)
    tables, offset = [], 0
    for uri, rows in zip(split["uris"], split["rows"], strict=True):
        lo, hi = max(start, offset), min(stop, offset + rows)
        if lo < hi:
            tables.append(read_rows(uri, lo - offset, hi - offset, columns))
        offset += rows
    if not tables:
        return read_rows(split["uris"][0], 0, 0, columns)
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def data_digest(data_dir: str | Path, name: str) -> tuple[str, int | None]:
    """(the md5 DVC records for `data_dir/name`, its rows): a split folder's from the manifest that
    lists its parts (no data read), a file's computed (rows for a Parquet file, else None)."""
    from components.data.parquet import file_md5, load_manifest

    path = Path(data_dir) / name
    if path.is_dir():
        entry = split_entry(load_manifest(data_dir), name)
        return entry["md5"], entry["rows"]
    rows = pq.read_metadata(path).num_rows if path.suffix == ".parquet" and path.is_file() else None
    return file_md5(path), rows


def sample_rows(n: int, most: int, seed: int = 0) -> np.ndarray | None:
    """A seeded sorted sample of at most `most` of `n` row numbers (None: all of them)."""
    return None if n <= most else np.sort(np.random.default_rng(seed).choice(n, most, replace=False))


def in_sample(keep: np.ndarray | None, start: int, count: int) -> np.ndarray:
    """Which of rows [start, start + count) are in `keep` (a `sample_rows` result; None: all): the
    rows of a batch read in order that a sample takes."""
    if keep is None:
        return np.ones(count, bool)
    return np.isin(np.arange(start, start + count), keep)
