"""A tabular workload's data stages, streamed: a table (CSV / TSV / Parquet, a file or a folder of
them, local or in an object store) -> Parquet parts of float32 features and the target (prepare)
-> train / val / test at random by seed, features standardised with train's statistics
(normalize). Memory is a batch of `prepare.batch_rows` rows, whatever the table's size."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from components.data.dataset import PartWriter, iter_batches, open_split
from components.data.errors import SourceError
from components.data.parquet import load_manifest, read_json, staging_dir, write_json
from components.data.progress import Rate
from components.data.remote import is_remote, listdir, open_input
from components.data.remote import kind as remote_kind

SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}
META = "stats.json"


def schema(features: list[str], target: str, task: str) -> pa.Schema:
    """Prepared and normalized rows: float32 features, the target as float32 (regression), as
    text (prepared classification) or as a class id (normalized classification: `task` 'ids')."""
    ty = {"regression": pa.float32(), "classification": pa.string(), "ids": pa.int64()}[task]
    return pa.schema([*(pa.field(f, pa.float32()) for f in features), pa.field(target, ty)])


def table_files(source: str) -> list[str]:
    """The files of the table `source` names: itself, or a folder's tables in name order."""
    remote = is_remote(source)
    found = remote_kind(source) if remote else ("file" if Path(source).is_file() else
                                                "dir" if Path(source).is_dir() else "missing")
    if found == "missing":
        raise SourceError(f"source {source}: not found")
    if found == "file":
        files = [source]
    else:
        names = [n for n, is_dir in listdir(source) if not is_dir] if remote else \
            sorted(p.name for p in Path(source).iterdir() if p.is_file())
        files = [f"{source.rstrip('/')}/{n}" for n in names if Path(n).suffix.lower() in SUFFIXES]
        if not files:
            raise SourceError(f"source {source}: a folder with no table in it (.csv, .tsv, .parquet)")
    for f in files:
        if Path(f).suffix.lower() not in SUFFIXES:
            raise SourceError(f"source {f}: a table is .csv, .tsv or .parquet")
    return files


def _open(path: str) -> Any:
    return open_input(path) if is_remote(path) else open(path, "rb")


def _open_arrow(path: str) -> Any:
    """For pyarrow's readers: an object store's file, or a local file read by Arrow itself (a Python
    file object hands it each column chunk as a Python bytes object, which the allocator kept:
    prepare's peak grew 29 MB from 1x to 3x)."""
    return open_input(path) if is_remote(path) else pa.OSFile(path)


def header(path: str) -> list[str]:
    """A table file's column names (a CSV's first line; a Parquet file's schema)."""
    if SUFFIXES[Path(path).suffix.lower()] == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(_open_arrow(path)).schema_arrow.names
        except (pa.ArrowInvalid, OSError) as err:
            raise SourceError(f"{path}: not a readable Parquet file ({err})") from None
    import pyarrow.csv as pc

    try:
        with pc.open_csv(_open(path), parse_options=_csv_parse(path),
                         read_options=pc.ReadOptions(block_size=1 << 16, use_threads=False)) as reader:
            return reader.schema.names
    except (pa.ArrowInvalid, OSError) as err:
        raise SourceError(f"{path}: not a readable CSV table ({err})") from None


def _csv_parse(path: str) -> Any:
    import pyarrow.csv as pc

    return pc.ParseOptions(delimiter="\t" if path.lower().endswith(".tsv") else ",")


def read_batches(path: str, batch_rows: int, columns: list[str], names: list[str], text: str | None = None
                 ) -> Iterator[pa.RecordBatch]:
    """`columns` of a table file (`names`: all its columns, `header`), about `batch_rows` rows at a
    time; a CSV's as float64 (`text`, a class label, as text: a column's type does not hang on what
    its first rows hold), a block of whole records at a time (`components/data/csv_chunks.py`:
    pyarrow's own streaming reader reads ahead, up to the whole file)."""
    if SUFFIXES[Path(path).suffix.lower()] == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(_open_arrow(path))
        for g in range(pf.metadata.num_row_groups):  # a row group at a time: iter_batches reads ahead
            yield from pf.read_row_group(g, columns=columns, use_threads=False).to_batches(max_chunksize=batch_rows)
        return
    import pyarrow.csv as pc

    from components.data.csv_chunks import read_blocks

    types = {c: pa.string() if c == text else pa.float64() for c in columns}
    convert = pc.ConvertOptions(include_columns=columns, column_types=types)
    row = 0
    with _open(path) as f:
        blocks = read_blocks(f, names, _csv_parse(path), convert)
        while True:
            try:
                table = next(blocks, None)
            except pa.ArrowInvalid as err:
                raise _csv_error(path, names, columns, row, err) from None
            if table is None:
                return
            row += table.num_rows
            yield from table.to_batches(max_chunksize=batch_rows)


def _csv_error(path: str, names: list[str], columns: list[str], row: int, err: Exception) -> SourceError:
    """pyarrow's complaint about a CSV block as one line naming the row (counted from the table's
    first) and the column."""
    msg = str(err).splitlines()[0]
    m = re.search(r"In CSV column #(\d+): Row #(\d+): CSV conversion error to \w+: (.*)", msg)
    if m and int(m.group(1)) < len(names):
        name = names[int(m.group(1))]
        hint = " (class labels? make the workload's task classification)" if name == columns[-1] else ""
        return SourceError(f"{path}: row {row + int(m.group(2))}: column {name!r} holds {m.group(3)}, "
                           f"not a number{hint}")
    return SourceError(f"{path}: after row {row}: not a readable CSV table ({msg})")


def _columns(path: str, names: list[str], target: str, features: list[str] | None) -> list[str]:
    """The feature columns, checked against the first batch's."""
    if target not in names:
        raise SourceError(f"{path}: no target column {target!r} (columns: {', '.join(names)}); set prepare.target")
    chosen = [n for n in names if n != target] if features is None else features
    missing = [f for f in chosen if f not in names]
    if missing:
        raise SourceError(f"{path}: no feature column {missing[0]!r} (columns: {', '.join(names)}); "
                          "set prepare.features")
    if not chosen:
        raise SourceError(f"{path}: no feature columns besides the target {target!r}")
    return chosen


def _checked(batch: pa.RecordBatch, path: str, first_row: int, features: list[str], target: str,
             task: str) -> pa.Table:
    """The batch's features as float32 and its target: one line naming the row and column otherwise."""
    cols = {}
    for f in [*features, target]:
        col = batch.column(batch.schema.get_field_index(f))
        if f == target and task == "classification":
            cols[f] = col.cast(pa.string())
            bad = col.is_null().to_numpy(zero_copy_only=False)
        else:
            if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)
                    or pa.types.is_null(col.type)):
                hint = " (class labels? make the workload's task classification)" if f == target else ""
                raise SourceError(f"{path}: column {f!r} holds {col.type}, not numbers{hint}")
            cols[f] = col.cast(pa.float32())
            bad = np.isnan(cols[f].to_numpy(zero_copy_only=False))  # a missing value comes out as NaN
        if bad.any():
            raise SourceError(f"{path}: row {first_row + int(np.flatnonzero(bad)[0]) + 1}: no value in column {f!r}")
    return pa.table(cols, schema=schema(features, target, task))


def prepare(source: str, target: str, features: list[str] | None, task: str, batch_rows: int, out: str) -> str:
    """The table at `source` -> `out/rows` (Parquet parts) and a manifest; the summary line."""
    files = table_files(source)
    rate = Rate("[prepare]", "rows")
    classes: set[str] = set()
    with staging_dir(out) as tmp:
        features = _columns(files[0], header(files[0]), target, features)
        writer = PartWriter(tmp / "rows", schema(features, target, task))
        text = target if task == "classification" else None
        for path in files:
            names = header(path)
            if missing := [c for c in [*features, target] if c not in names]:
                raise SourceError(f"{path}: no column {missing[0]!r}, which {files[0]} has")
            row = 0
            for batch in read_batches(path, batch_rows, [*features, target], names, text):
                table = _checked(batch, path, row, features, target, task)
                if task == "classification":
                    classes.update(table.column(target).unique().to_pylist())
                writer.write(table)
                row += batch.num_rows
                if line := rate.add(batch.num_rows):
                    print(line, flush=True)
        if writer.rows == 0:
            raise SourceError(f"source {source}: no rows")
        if task == "classification" and len(classes) < 2:
            raise SourceError(f"source {source}: every row is {sorted(classes)[0]!r} in column {target!r}; "
                              "a classifier needs at least 2 classes")
        entry = writer.close()
        write_json(tmp / "manifest.json", {"features": features, "target": target, "task": task,
                                           "classes": sorted(classes), "files": {"rows": entry}})
    return f"{entry['rows']:,} rows x {len(features)} features ({task}, target {target!r}) -> {out}"


def _prepared(src: str, m: dict[str, Any], batch_rows: int, seed: int, val: float, test: float
              ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(features, target, split: 0 train, 1 val, 2 test) a batch at a time. A row's split is a
    uniform draw, one per row in order: a Generator's doubles concatenate, so both passes put the
    same rows in the same splits whatever the batch sizes."""
    split = open_split(src, "rows", m, schema(m["features"], m["target"], m["task"]))
    rng = np.random.default_rng(seed)
    for b in iter_batches(split.uris, batch_rows):
        x = np.stack([b.column(f).to_numpy() for f in m["features"]], 1)
        u = rng.random(b.num_rows)
        yield x, b.column(m["target"]).to_numpy(zero_copy_only=False), np.where(u < test, 2, np.where(u < test + val, 1, 0))


def normalize(src: str, out: str, batch_rows: int, seed: int, val_frac: float, test_frac: float,
              part_mb: int) -> str:
    """Split the prepared rows and standardise them (train's statistics), two streamed passes."""
    m = load_manifest(src)
    features, target, task, classes = m["features"], m["target"], m["task"], np.asarray(m["classes"], dtype=object)
    n, s1, s2 = np.zeros(3), np.zeros(len(features)), np.zeros(len(features))
    t_sum, counts = 0.0, np.zeros(len(classes), np.int64)
    for x, y, part in _prepared(src, m, batch_rows, seed, val_frac, test_frac):
        n += np.bincount(part, minlength=3)
        tr = part == 0
        s1 += x[tr].sum(0, dtype=np.float64)
        s2 += np.square(x[tr], dtype=np.float64).sum(0)
        if task == "regression":
            t_sum += float(y[tr].sum(dtype=np.float64))
        else:
            counts += np.bincount(np.searchsorted(classes, y[tr].astype(object)), minlength=len(classes))
    names = ("train", "val", "test")
    if (empty := [names[i] for i in range(3) if n[i] == 0]):
        raise SourceError(f"{src}: the {empty[0]} split is empty ({int(n.sum())} rows; raise normalize.val_frac / "
                          "test_frac, or bring more rows)")
    mean = s1 / n[0]
    std = np.sqrt(np.maximum(s2 / n[0] - mean ** 2, 0.0))
    std = np.where(std > 1e-12, std, 1.0)  # a constant column stays 0, not NaN
    out_schema = schema(features, target, "ids" if task == "classification" else task)
    with staging_dir(out) as tmp:
        writers = [PartWriter(tmp / s, out_schema, part_mb << 20) for s in names]
        for x, y, part in _prepared(src, m, batch_rows, seed, val_frac, test_frac):
            xs = ((x - mean) / std).astype(np.float32)
            yy = np.searchsorted(classes, y.astype(object)) if task == "classification" else y
            for i, w in enumerate(writers):
                sel = part == i
                if sel.any():
                    w.write(pa.table({**{f: xs[sel, j] for j, f in enumerate(features)}, target: yy[sel]},
                                     schema=out_schema))
        files = {s: w.close() for s, w in zip(names, writers, strict=True)}
        stats = {"features": features, "target": target, "task": task, "classes": m["classes"],
                 "mean": mean.tolist(), "std": std.tolist(), "n_train": int(n[0]),
                 "train_target_mean": t_sum / n[0] if task == "regression" else None,
                 "train_class_counts": counts.tolist() if task == "classification" else None}
        write_json(tmp / META, stats)
        write_json(tmp / "manifest.json", {"features": features, "target": target, "task": task, "files": files})
    return f"train {files['train']['rows']:,}, val {files['val']['rows']:,}, test {files['test']['rows']:,} rows -> {out}"


def split_xy(folder: str | Path, split: str, bs: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A normalized split's (features, target) a batch at a time, in file order."""
    m = load_manifest(folder)
    task = "ids" if m["task"] == "classification" else m["task"]
    s = open_split(folder, split, m, schema(m["features"], m["target"], task))
    for b in iter_batches(s.uris, bs):
        yield np.stack([b.column(f).to_numpy() for f in m["features"]], 1), np.array(b.column(m["target"]))


def stats(folder: str | Path) -> dict[str, Any]:
    """The normalized folder's statistics (features, target, task, classes, mean, std)."""
    return read_json(Path(folder) / META)
