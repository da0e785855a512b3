"""The text classifier's data stages: labelled documents -> passages split by document
(prepare) -> one file per split, class counts (normalize) -> what workers read, with the
char-LM encoder's vocabulary and shape (training_data)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.data.dataset import PART_MB, PartWriter, iter_batches, open_split
from components.data.parquet import (
    DataError,
    load_manifest,
    read_json,
    staging_dir,
    write_json,
)
from components.workloads.text_classifier.data import (
    PASSAGES_SCHEMA,
    load_documents,
    passages,
    split_by_document,
)
from components.workloads.text_classifier.params import TextNormalizeParams, TextPrepareParams

SPLIT_SCHEMA = pa.schema([f for f in PASSAGES_SCHEMA if f.name != "split"])


ROW_GROUP = 2048  # passages per row group


class _Rows:
    """Passage rows bound for one Parquet file (`path`), or a folder of parts (`PartWriter`),
    written ROW_GROUP at a time."""

    def __init__(self, path: Path, schema: pa.Schema, part_bytes: int | None = None) -> None:
        self.schema = schema
        self.w = PartWriter(path, schema, part_bytes) if part_bytes else pq.ParquetWriter(path, schema,
                                                                                           compression="zstd")
        self.rows: dict[str, list] = {f.name: [] for f in schema}
        self.n = 0

    def add(self, **row: Any) -> None:
        for k, v in row.items():
            self.rows[k].append(v)
        if len(self.rows["text"]) >= ROW_GROUP:
            self.flush()

    def write(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self.n += table.num_rows
        if isinstance(self.w, PartWriter):
            self.w.write(table, row_group_size=ROW_GROUP)
        else:
            self.w.write_table(table, row_group_size=ROW_GROUP)

    def flush(self) -> None:
        if self.rows["text"]:
            self.write(pa.table(self.rows, schema=self.schema))
            self.rows = {f.name: [] for f in self.schema}

    def close(self) -> dict[str, Any]:
        """The rows written; a folder of parts' manifest entry."""
        self.flush()
        out = self.w.close()
        return out if isinstance(out, dict) else {"rows": self.n}


def shuffle_bucket(path: Path, out: _Rows, order: np.random.Generator, resplit: np.random.Generator,
                   budget: int) -> None:
    """Append a bucket's rows to `out` in a seeded random order, holding at most about `budget`
    bytes: a bucket that fits (its row groups' uncompressed size) is read and permuted in memory;
    one that does not (the source's size guessed the passages' short: a table of short texts, each
    repeated to a whole passage) is dealt out, a row group at a time, into seeded sub-buckets that
    fit, and each is shuffled in turn. The bucket's file is gone afterwards."""
    pf = pq.ParquetFile(path)
    md = pf.metadata
    size = sum(md.row_group(g).total_byte_size for g in range(md.num_row_groups))
    if size <= budget or md.num_rows <= 1:
        parts = [pf.read_row_group(g, use_threads=False) for g in range(md.num_row_groups)]  # <= budget in all
        t = pa.concat_tables(parts) if parts else PASSAGES_SCHEMA.empty_table()
        if t.num_rows:
            out.write(t.take(order.permutation(t.num_rows)))
        path.unlink()
        return
    k = max(2, -(-size // budget))
    subs = [_Rows(path.with_name(f"{path.stem}.{i}.parquet"), pf.schema_arrow) for i in range(k)]
    for g in range(md.num_row_groups):
        t = pf.read_row_group(g, use_threads=False)
        where = resplit.integers(k, size=t.num_rows)
        for i, sub in enumerate(subs):
            sub.write(t.filter(pa.array(where == i)))
    for sub in subs:
        sub.close()
    path.unlink()
    for i in range(k):
        shuffle_bucket(path.with_name(f"{path.stem}.{i}.parquet"), out, order, resplit, budget)


def prepare_texts(p: TextPrepareParams, out: str | Path) -> dict[str, Any]:
    """Read the documents one at a time, split them by document (stratified by class), cut them into
    passages and publish `passages/` (part files, rows in a seeded random order), `classes.json` and
    `manifest.json` under `out`. The order comes from an external shuffle: passages go to seeded
    buckets of about `shuffle_mb` each, and each bucket is shuffled in memory in turn, split again
    where it came out larger (`shuffle_bucket`; one bucket when the source fits: a plain seeded
    permutation of every passage)."""
    import math
    import shutil

    from components.data.progress import Rate

    src = load_documents(p.source, p.text_column, p.label_column)
    classes = sorted(set(src.labels))
    index = {c: i for i, c in enumerate(classes)}
    split = split_by_document(src.labels, p.val_frac, p.test_frac, p.seed)
    n_buckets = max(1, math.ceil(src.size * 1.2 / (p.shuffle_mb * 2**20)))  # passages overlap their text a little
    to_bucket = np.random.default_rng([p.seed, 1])
    counts: Counter = Counter()
    rate = Rate("[prepare]", "documents", len(src.names))
    filled = 0
    with staging_dir(out) as tmp:
        (tmp / ".buckets").mkdir()
        buckets = [_Rows(tmp / ".buckets" / f"{j}.parquet", PASSAGES_SCHEMA) for j in range(n_buckets)]
        for name, label, sp, text in zip(src.names, src.labels, split, src.texts(), strict=True):
            pieces = passages(text, p.passage_chars)
            filled += 0 < len(text) < p.passage_chars
            where = to_bucket.integers(n_buckets, size=len(pieces)) if n_buckets > 1 else np.zeros(len(pieces), int)
            for piece, j in zip(pieces, where, strict=True):
                buckets[j].add(text=piece, label=index[label], document=name, split=sp)
            counts[sp] += len(pieces)
            rate.add(1)
        for b in buckets:
            b.close()
        n_rows = sum(counts.values())
        if n_rows == 0:
            raise DataError(f"source {p.source}: no document is as long as one passage ({p.passage_chars} characters)")
        # rows in a seeded random order: workers read contiguous row ranges
        order, resplit = np.random.default_rng(p.seed), np.random.default_rng([p.seed, 2])
        out_rows = _Rows(tmp / "passages", PASSAGES_SCHEMA, PART_MB << 20)
        for j in range(n_buckets):
            shuffle_bucket(tmp / ".buckets" / f"{j}.parquet", out_rows, order, resplit, p.shuffle_mb << 20)
        entry = out_rows.close()
        shutil.rmtree(tmp / ".buckets")
        held = {s: sorted(n for n, sp in zip(src.names, split, strict=True) if sp == s) for s in ("val", "test")}
        train_only = sorted(c for c in classes if not any(lab == c and sp != "train"
                                                          for lab, sp in zip(src.labels, split, strict=True)))
        write_json(tmp / "classes.json", {"classes": classes})
        manifest = {"source": p.source, "documents": len(src.names), "rows": n_rows,
                    "splits": {s: counts.get(s, 0) for s in ("train", "val", "test")},
                    "held_out": held, "train_only_classes": train_only, "short_documents_filled": int(filled),
                    "skipped": src.skipped, "files": {"passages": entry}}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def normalize_texts(src: str | Path, out: str | Path, p: TextNormalizeParams, seed: int = 0) -> dict[str, Any]:
    """One file per split (text, label, document), streamed a row group at a time; train optionally
    sampled down (a seeded sample of row numbers: memory is the sample's index); class counts."""
    src = Path(src)
    manifest_in = load_manifest(src)
    passages_in = open_split(src, "passages", manifest_in, PASSAGES_SCHEMA).uris
    classes = read_json(src / "classes.json")["classes"]
    n_split = manifest_in["splits"]
    keep = None
    if p.max_train_passages and n_split["train"] > p.max_train_passages:
        keep = np.sort(np.random.default_rng(seed).choice(n_split["train"], p.max_train_passages, replace=False))
    files, counts = {}, {}
    with staging_dir(out) as tmp:
        writers = {s: _Rows(tmp / s, SPLIT_SCHEMA, p.part_mb << 20) for s in ("train", "val", "test")}
        by: dict[str, Counter] = {s: Counter() for s in writers}
        seen_train = 0
        for batch in iter_batches(passages_in, ROW_GROUP):
            for text, label, doc, sp in zip(*(batch.column(c).to_pylist() for c in ("text", "label", "document",
                                                                                    "split")), strict=True):
                if sp == "train":
                    i, seen_train = seen_train, seen_train + 1
                    if keep is not None and keep[min(np.searchsorted(keep, i), len(keep) - 1)] != i:
                        continue
                writers[sp].add(text=text, label=label, document=doc)
                by[sp][label] += 1
        for split, w in writers.items():
            files[split] = w.close()
            if files[split]["rows"] == 0:
                raise DataError(f"{src}: the {split} split is empty (too few documents per class to hold one out?)")
            counts[split] = {classes[k]: by[split].get(k, 0) for k in range(len(classes))}
        write_json(tmp / "classes.json", {"classes": classes, "counts": counts})
        manifest = {"files": files, "classes": classes, "held_out": manifest_in["held_out"]}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def train_passages(folder: str | Path, steps: int, bs: int, seed: int) -> tuple[Iterable[list[str]], int]:
    """`steps` batches of `bs` train passages in a seeded order (checked against the manifest;
    what `adapt` reads: never val or test), read a window of row groups at a time; and how many
    passages train has."""
    from components.data.stream import BatchStream, EpochOrder, rank_blocks
    from components.store import verified_cache

    split = open_split(folder, "train", load_manifest(folder), SPLIT_SCHEMA, verified_cache())
    blocks, n = rank_blocks(split.as_data(), split.rows, 0, 1)
    stream = BatchStream(split.as_data(), EpochOrder(blocks, seed, 0, 0), bs, steps,
                         lambda t, step: t.column("text").to_pylist(), columns=["text"])
    return stream, n


def encoder_info(model_file: str | Path) -> dict[str, Any]:
    """The char-LM encoder's vocabulary and shape, from its model file."""
    import torch

    path = Path(model_file)
    if not path.is_file():
        raise DataError(f"{model_file}: no char-LM model file (train.encoder_model); run `dvc repro` (adapt and "
                        "train@char_lm write them)")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    cfg = blob["config"]
    return {"vocab": list(blob["vocab"]), "vocab_size": cfg["vocab_size"], "arch": cfg.get("arch", "lstm"),
            "n_fac": cfg["n_fac"], "n_hidden": cfg["n_hidden"], "n_layers": cfg.get("n_layers", 1),
            "nonlinearity": cfg.get("nonlinearity", "tanh"),
            # an adapted LM names the general one it was fine-tuned from (ULMFiT's first step)
            "fine_tuned_from": blob.get("fine_tuned_from")}


def training_data(folder: str | Path, encoder_model: str | Path) -> dict[str, Any]:
    """Check the normalized splits (O(1) in their size: `checked_and_staged`) and stage them, with
    the char-LM model file, for workers."""
    from components.store import checked_and_staged, stage_data

    folder = Path(folder)
    manifest, splits = checked_and_staged(folder, SPLIT_SCHEMA)
    encoder = encoder_info(encoder_model)
    staged = stage_data({"encoder": encoder_model})
    return {"train_uri": splits["train"], "val_uri": splits["val"], "encoder_uri": staged["encoder"],
            "n_train": manifest["files"]["train"]["rows"], "n_val": manifest["files"]["val"]["rows"],
            "n_classes": len(manifest["classes"]), "classes": manifest["classes"], "encoder": encoder}
