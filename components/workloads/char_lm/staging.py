"""The char-LM's data stages: a corpus -> documents (prepare) -> contiguous splits of token
ids with a train-only vocabulary (normalize)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from components.data.parquet import (
    DOCS_SCHEMA,
    TOKEN_ROW_GROUP,
    DataError,
    check_table,
    load_manifest,
    staging_dir,
    write_json,
    write_table,
)
from components.data.sources import SourceError, load_source
from components.workloads.char_lm.data import Vocab, join_documents, split_text, tokens_table
from components.workloads.char_lm.params import NormalizeParams


def prepare_corpus(source: str, sha256: str | None, out: str | Path) -> dict:
    """Load the corpus and publish `docs.parquet` + `manifest.json` under `out`."""
    docs, source_sha = load_source(source, sha256)
    n_chars = sum(len(d.text) for d in docs)
    if n_chars == 0 or not any(d.text.strip() for d in docs):
        raise SourceError(f"source {source}: the corpus is empty")
    table = pa.Table.from_pylist([{"doc_id": d.doc_id, "text": d.text} for d in docs], schema=DOCS_SCHEMA)
    with staging_dir(out) as tmp:
        entry = write_table(tmp / "docs.parquet", table)
        manifest = {"source": source, "source_sha256": source_sha, "rows": len(docs), "chars": n_chars,
                    "files": {"docs.parquet": entry}}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def normalize_corpus(src: str | Path, out: str | Path, p: NormalizeParams) -> dict:
    """Split the corpus, build the vocabulary from train only, write ids per split."""
    src = Path(src)
    manifest_in = load_manifest(src)
    pf = check_table(src / "docs.parquet", DOCS_SCHEMA, manifest_in["files"]["docs.parquet"])
    text = join_documents(pf.read().column("text").to_pylist())
    splits = split_text(text, p.val_frac, p.test_frac)
    for name, part in splits.items():
        if len(part) < 2:
            raise DataError(f"{src}: the {name} split has {len(part)} characters; the corpus "
                            f"({len(text)} characters) is too short for val_frac={p.val_frac}, test_frac={p.test_frac}")
    vocab = Vocab.build(splits["train"], p.min_count)
    files = {}
    with staging_dir(out) as tmp:
        for name, part in splits.items():
            files[f"{name}.parquet"] = write_table(tmp / f"{name}.parquet", tokens_table(vocab.encode(part)),
                                                   row_group_size=TOKEN_ROW_GROUP)
        write_json(tmp / "vocab.json", vocab.to_json())
        manifest = {"source_sha256": manifest_in["source_sha256"], "vocab_size": len(vocab),
                    "chars": {k: len(v) for k, v in splits.items()}, "files": files,
                    "unknown_in": {k: int((vocab.encode(v) == 0).sum()) for k, v in splits.items() if k != "train"}}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def training_data(folder: str | Path) -> dict:
    """Check the normalized token files and stage them for workers: URIs, sizes, vocabulary size."""
    from components.data.parquet import TOKENS_SCHEMA, read_json
    from components.store import checked_and_staged

    folder = Path(folder)
    manifest, uris = checked_and_staged(folder, TOKENS_SCHEMA)
    return {"train_uri": uris["train"], "val_uri": uris["val"], "n_train": manifest["files"]["train.parquet"]["rows"],
            "n_val": manifest["files"]["val.parquet"]["rows"],
            "vocab_size": len(read_json(folder / "vocab.json")["itos"])}
