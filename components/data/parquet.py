"""Parquet and JSON I/O with schemas, manifests and checks.

Writes go to a temporary name in the same folder and are renamed into place, so a crash
never leaves a half-written file under its final name. Reads check the schema, the row
count and the sha256 recorded in the manifest that the writing stage published, so a
truncated, byte-flipped or swapped file between stages is caught before training.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

DOCS_SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string())])
TOKENS_SCHEMA = pa.schema([("id", pa.uint16())])


def tokens_schema(dtype: str = "uint16") -> pa.Schema:
    """A token file's schema: ids in the smallest integer type the vocabulary allows (the manifest's `dtype`)."""
    return pa.schema([("id", pa.from_numpy_dtype(dtype))])
TOKEN_ROW_GROUP = 1 << 16  # tokens per row group: a worker reads only the groups it needs


class DataError(RuntimeError):
    """A data file that is missing, corrupt or not what its manifest says."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_md5(path: str | Path) -> str:
    """Hex md5 of a file: what DVC 3 records for a file dependency."""
    h = hashlib.md5()  # noqa: S324 (content address, as DVC computes it)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parquet_rows(path: str | Path) -> int:
    """A Parquet file's row count, from its footer (no data read)."""
    return pq.read_metadata(path).num_rows


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; publish as a normal file
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (sorted keys, so the bytes are stable)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, naming it in the error if it is missing or malformed."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found (run the stage that writes it first)") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


def write_table(path: str | Path, table: pa.Table, row_group_size: int | None = None) -> dict[str, Any]:
    """Write a Parquet file atomically; return its manifest entry (rows, sha256)."""
    with atomic_path(path) as tmp:
        # Fixed writer options, so the same data gives the same bytes.
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd",
                       write_statistics=True, use_dictionary=True)
    return {"rows": table.num_rows, "sha256": file_sha256(path)}


def sha256_matches(path: Path, want: str, cache: Path | None = None) -> bool:
    """Whether `path`'s sha256 is `want`. With a `cache` folder the answer is kept per file under
    its stat (size, mtime, inode): a file already checked and not touched since is not read again,
    so a stage's start costs a stat, not a pass over the data. Any write to the file changes its
    stat (a copy, a rename onto it, a byte written in place), and it is hashed again."""
    if cache is None:
        return file_sha256(path) == want
    st = path.stat()
    stamp = [str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    note = cache / f"{hashlib.sha256(stamp[0].encode()).hexdigest()[:24]}.json"
    try:
        if json.loads(note.read_text()) == {"stat": stamp, "sha256": want}:
            return True
    except (OSError, ValueError):
        pass
    if file_sha256(path) != want:
        return False
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(note) as tmp:
        tmp.write_text(json.dumps({"stat": stamp, "sha256": want}))
    return True


def check_table(path: str | Path, schema: pa.Schema, expected: dict[str, Any] | None = None,
                cache: Path | None = None) -> pq.ParquetFile:
    """Open a Parquet file and check schema, row count and checksum against its manifest entry
    (the checksum once per file and stat when `cache` is given: `sha256_matches`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found (run the stage that writes it first)")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (zero bytes)")
    if expected and "sha256" in expected and not sha256_matches(path, expected["sha256"], cache):
        raise DataError(f"{path}: sha256 differs from the manifest: the file changed after it was written")
    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    if not pf.schema_arrow.equals(schema):
        raise DataError(f"{path}: schema {pf.schema_arrow} differs from the expected {schema}")
    if expected and "rows" in expected and pf.metadata.num_rows != expected["rows"]:
        raise DataError(f"{path}: {pf.metadata.num_rows} rows, manifest says {expected['rows']}")
    return pf


def load_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest.json a stage wrote beside its Parquet files."""
    return read_json(Path(folder) / "manifest.json")


def publish_dir(staging: str | Path, final: str | Path) -> None:
    """Replace `final` with the fully written `staging` folder (rename, never a partial copy)."""
    import shutil

    staging, final = Path(staging), Path(final)
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(final: str | Path) -> Iterator[Path]:
    """A fresh folder beside `final`, published onto `final` only if the block succeeds."""
    import shutil

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_parquet(uri: str) -> pq.ParquetFile:
    """Open a Parquet file by local path or any URI pyarrow understands (s3://, gs://, ...)."""
    import pyarrow.fs as pafs

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
