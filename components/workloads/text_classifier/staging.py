"""The text classifier's data stages: labelled documents -> passages split by document
(prepare) -> one file per split, class counts (normalize) -> what workers read, with the
char-LM encoder's vocabulary and shape (training_data)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.data.parquet import (
    DataError,
    check_table,
    load_manifest,
    read_json,
    staging_dir,
    write_json,
    write_table,
)
from components.workloads.text_classifier.data import (
    PASSAGES_SCHEMA,
    load_documents,
    passages_table,
    split_by_document,
)
from components.workloads.text_classifier.params import TextNormalizeParams, TextPrepareParams

SPLIT_SCHEMA = pa.schema([f for f in PASSAGES_SCHEMA if f.name != "split"])


def prepare_texts(p: TextPrepareParams, out: str | Path) -> dict[str, Any]:
    """Load the documents, split them by document (stratified by class), cut them into
    passages and publish `passages.parquet`, `classes.json` and `manifest.json` under `out`."""
    docs = load_documents(p.source)
    classes = sorted({d.label for d in docs})
    split = split_by_document([d.label for d in docs], p.val_frac, p.test_frac, p.seed)
    table = passages_table(docs, split, classes, p.passage_chars)
    if table.num_rows == 0:
        raise DataError(f"source {p.source}: no document is as long as one passage ({p.passage_chars} characters)")
    # rows in a seeded random order: workers read contiguous row ranges
    table = table.take(np.random.default_rng(p.seed).permutation(table.num_rows))
    held = {s: sorted(d.name for d, sp in zip(docs, split, strict=True) if sp == s) for s in ("val", "test")}
    train_only = sorted(c for c in classes if not any(d.label == c and sp != "train"
                                                      for d, sp in zip(docs, split, strict=True)))
    with staging_dir(out) as tmp:
        entry = write_table(tmp / "passages.parquet", table, row_group_size=2048)
        write_json(tmp / "classes.json", {"classes": classes})
        counts = Counter(table.column("split").to_pylist())
        manifest = {"source": p.source, "documents": len(docs), "rows": table.num_rows,
                    "splits": {s: counts.get(s, 0) for s in ("train", "val", "test")},
                    "held_out": held, "train_only_classes": train_only, "files": {"passages.parquet": entry}}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def normalize_texts(src: str | Path, out: str | Path, p: TextNormalizeParams, seed: int = 0) -> dict[str, Any]:
    """One file per split (text, label, document); train optionally sampled down; class counts."""
    src = Path(src)
    manifest_in = load_manifest(src)
    check_table(src / "passages.parquet", PASSAGES_SCHEMA, manifest_in["files"]["passages.parquet"])
    table = pq.read_table(src / "passages.parquet")
    classes = read_json(src / "classes.json")["classes"]
    files, counts = {}, {}
    with staging_dir(out) as tmp:
        for split in ("train", "val", "test"):
            part = table.filter(pa.compute.equal(table.column("split"), split)).drop_columns(["split"])
            if split == "train" and p.max_train_passages and part.num_rows > p.max_train_passages:
                keep = np.sort(np.random.default_rng(seed).choice(part.num_rows, p.max_train_passages, replace=False))
                part = part.take(keep)
            if part.num_rows == 0:
                raise DataError(f"{src}: the {split} split is empty (too few documents per class to hold one out?)")
            files[f"{split}.parquet"] = write_table(tmp / f"{split}.parquet", part.cast(SPLIT_SCHEMA),
                                                    row_group_size=2048)
            by = Counter(part.column("label").to_pylist())
            counts[split] = {classes[k]: by.get(k, 0) for k in range(len(classes))}
        write_json(tmp / "classes.json", {"classes": classes, "counts": counts})
        manifest = {"files": files, "classes": classes, "held_out": manifest_in["held_out"]}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def train_texts(folder: str | Path) -> list[str]:
    """The train split's passages, checked against the manifest (what `adapt` reads: never val or test)."""
    folder = Path(folder)
    entry = load_manifest(folder)["files"]["train.parquet"]
    return check_table(folder / "train.parquet", SPLIT_SCHEMA, entry).read(columns=["text"]).column("text").to_pylist()


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
    """Check the normalized files and stage them, with the char-LM model file, for workers."""
    from components.store import checked_and_staged, stage_data

    folder = Path(folder)
    manifest, uris = checked_and_staged(folder, SPLIT_SCHEMA)
    encoder = encoder_info(encoder_model)
    staged = stage_data({"encoder": encoder_model})
    return {"train_uri": uris["train"], "val_uri": uris["val"], "encoder_uri": staged["encoder"],
            "n_train": manifest["files"]["train.parquet"]["rows"], "n_val": manifest["files"]["val.parquet"]["rows"],
            "n_classes": len(manifest["classes"]), "classes": manifest["classes"], "encoder": encoder}
