"""The char-LM's data stages: a corpus, read in pieces -> documents (prepare) -> contiguous splits
of token ids with a train-only vocabulary (normalize). Both stream: memory is a piece of text
and a row group of ids, whatever the corpus's size."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from components.data.dataset import PART_MB, PartWriter, iter_batches, open_split
from components.data.parquet import (
    DOCS_SCHEMA,
    TOKEN_ROW_GROUP,
    DataError,
    load_manifest,
    staging_dir,
    tokens_schema,
    write_json,
)
from components.data.progress import Rate
from components.data.sources import Corpus, SourceError
from components.store import download_cache
from components.workloads.char_lm.data import Vocab, token_schema_of
from components.workloads.char_lm.params import NormalizeParams

PIECE_BYTES = 1 << 20  # a corpus is read, and stored, in pieces of about this many bytes: prepare's memory (4 MB pieces let glibc's heap grow with the corpus: 195 -> 236 MB from 12 to 72 MB of text; 1 MB: 144 MB at both)


def prepare_corpus(source: str, sha256: str | None, out: str | Path, piece_bytes: int = PIECE_BYTES,
                   part_mb: int = PART_MB) -> dict:
    """Read the corpus a piece at a time and publish `docs/` (part files, a row per piece, a
    document's pieces in order under its id) + `manifest.json` under `out`."""
    corpus = Corpus(source, sha256, download_cache("char_lm"), piece_bytes)
    out = Path(out)
    if corpus.bytes is not None:  # checked before writing: a full disk must not be found half-way
        free = shutil.disk_usage(next(p for p in (out, *out.parents) if p.exists())).free
        if corpus.bytes > free:
            raise SourceError(f"source {source}: {_size(corpus.bytes)} of text, and {_size(free)} free where {out} "
                              "goes: its Parquet would not fit")
    rate = Rate("[prepare]", "bytes", corpus.bytes)
    docs = chars = joined = 0
    last_id, last_text = None, ""
    blank = True
    with staging_dir(out) as tmp:
        w = PartWriter(tmp / "docs", DOCS_SCHEMA, part_mb << 20)
        for doc_id, text in corpus:
            if doc_id != last_id:
                if last_id is not None:  # the last document's end: a newline where it lacks one, then a blank line
                    joined += (0 if last_text.endswith("\n") else 1) + 1
                docs += 1
            w.write(pa.table({"doc_id": [doc_id], "text": [text]}, schema=DOCS_SCHEMA))
            chars += len(text)
            joined += len(text)
            blank = blank and not text.strip()
            last_id, last_text = doc_id, text
            rate.add(corpus.read - rate.done)
        if last_id is not None:
            joined += 0 if last_text.endswith("\n") else 1
        entry = w.close()
        if chars == 0 or blank:
            raise SourceError(f"source {source}: the corpus is empty")
        manifest = {"source": source, "source_sha256": corpus.sha256, "rows": entry["rows"], "documents": docs,
                    "chars": chars, "joined_chars": joined, "files": {"docs": entry}}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def _size(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GB"


def joined_pieces(uris: tuple[str, ...] | list[str]) -> Iterator[str]:
    """The corpus as one text, a piece at a time: documents in order, each ending in a newline,
    a blank line between them (what `join_documents` gives for the whole list)."""
    last_id, last_text = None, ""
    for batch in iter_batches(uris, 1):  # a row is a piece of about PIECE_BYTES: one at a time
        for doc_id, text in zip(batch.column("doc_id").to_pylist(), batch.column("text").to_pylist(), strict=True):
            if last_id is not None and doc_id != last_id:
                yield ("" if last_text.endswith("\n") else "\n") + "\n"
            if text:
                yield text
                last_text = text
            last_id = doc_id
    if last_id is not None and not last_text.endswith("\n"):
        yield "\n"


class _SplitWriter:
    """Ids of one split, written in row groups of exactly TOKEN_ROW_GROUP tokens as they come,
    into a folder of part files (`PartWriter`)."""

    def __init__(self, folder: Path, dtype: np.dtype, part_bytes: int) -> None:
        self.dtype, self.schema = dtype, tokens_schema(str(dtype))
        self.w = PartWriter(folder, self.schema, part_bytes)
        self.pending: list[np.ndarray] = []
        self.n_pending = self.unknown = 0

    def add(self, ids: np.ndarray) -> None:
        self.pending.append(ids)
        self.n_pending += len(ids)
        self.unknown += int((ids == 0).sum())
        if self.n_pending >= TOKEN_ROW_GROUP:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        ids = np.concatenate(self.pending) if self.pending else np.empty(0, self.dtype)
        cut = len(ids) if final else len(ids) // TOKEN_ROW_GROUP * TOKEN_ROW_GROUP
        if cut:
            self.w.write(pa.table({"id": pa.array(ids[:cut])}, schema=self.schema), row_group_size=TOKEN_ROW_GROUP)
        self.pending, self.n_pending = ([ids[cut:]], len(ids) - cut) if cut < len(ids) else ([], 0)

    def close(self) -> dict:
        self._flush(final=True)
        return self.w.close()


def normalize_corpus(src: str | Path, out: str | Path, p: NormalizeParams) -> dict:
    """Split the corpus (contiguous: train, val, test), build the vocabulary from train only, write
    ids per split in the smallest integer type the vocabulary allows. Two streaming passes over
    the prepared text: the vocabulary of train, then the ids."""
    src = Path(src)
    manifest_in = load_manifest(src)
    docs = open_split(src, "docs", manifest_in, DOCS_SCHEMA).uris
    n = manifest_in["joined_chars"]
    n_test, n_val = int(n * p.test_frac), int(n * p.val_frac)
    sizes = {"train": n - n_val - n_test, "val": n_val, "test": n_test}
    for name, size in sizes.items():
        if size < 2:
            raise DataError(f"{src}: the {name} split has {size} characters; the corpus "
                            f"({n} characters) is too short for val_frac={p.val_frac}, test_frac={p.test_frac}")
    # 1. the vocabulary of train: its characters counted, a piece at a time
    counts: Counter = Counter()
    at = 0
    for piece in joined_pieces(docs):
        counts.update(piece[:max(0, sizes["train"] - at)])
        at += len(piece)
        if at >= sizes["train"]:
            break
    vocab = Vocab.from_counts(counts, p.min_count)
    # 2. ids, each split's in its own file as the text streams past its offsets
    bounds = {"train": (0, sizes["train"]), "val": (sizes["train"], sizes["train"] + n_val), "test": (n - n_test, n)}
    rate = Rate("[normalize]", "characters", n)
    with staging_dir(out) as tmp:
        writers = {k: _SplitWriter(tmp / k, vocab.dtype, p.part_mb << 20) for k in bounds}
        at = 0
        for piece in joined_pieces(docs):
            ids = vocab.encode(piece)
            for k, (lo, hi) in bounds.items():
                a, b = max(lo, at), min(hi, at + len(ids))
                if a < b:
                    writers[k].add(ids[a - at:b - at])
            at += len(ids)
            rate.add(len(ids))
        files = {k: w.close() for k, w in writers.items()}
        write_json(tmp / "vocab.json", vocab.to_json())
        manifest = {"source_sha256": manifest_in["source_sha256"], "vocab_size": len(vocab), "dtype": str(vocab.dtype),
                    "chars": sizes, "files": files,
                    "unknown_in": {k: w.unknown for k, w in writers.items() if k != "train"}}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def training_data(folder: str | Path) -> dict:
    """Check the normalized token splits (O(1) in their size: `checked_and_staged`) and stage them
    for workers: where their parts are, sizes, vocabulary size."""
    from components.data.parquet import read_json
    from components.store import checked_and_staged

    folder = Path(folder)
    manifest, splits = checked_and_staged(folder, token_schema_of(load_manifest(folder)))
    return {"train_uri": splits["train"], "val_uri": splits["val"], "n_train": manifest["files"]["train"]["rows"],
            "n_val": manifest["files"]["val"]["rows"], "vocab_size": len(read_json(folder / "vocab.json")["itos"])}
