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


def check_table(path: str | Path, schema: pa.Schema, expected: dict[str, Any] | None = None) -> pq.ParquetFile:
    """Open a Parquet file and check schema, row count and checksum against its manifest entry."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found (run the stage that writes it first)")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (zero bytes)")
    if expected and "sha256" in expected and file_sha256(path) != expected["sha256"]:
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
