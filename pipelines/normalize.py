"""normalize: prepared data -> per-split Parquet + statistics from the train split only.

char_lm: contiguous train / val / test token ids and a train-only vocabulary.
image_classifier: per-channel mean and population std of train pixels scaled to [0, 1],
streamed a batch at a time (memory bounded by a batch), and one Parquet file per split.

    python -m pipelines.normalize --workload char_lm --src data/char_lm/prepared --out data/char_lm/normalized
"""

from __future__ import annotations

import argparse
from pathlib import Path

from components.config import ImageNormalizeParams, NormalizeParams
from components.data.images import IMAGES_SCHEMA, ChannelStats, decode, iter_split
from components.data.parquet import (
    DOCS_SCHEMA,
    TOKEN_ROW_GROUP,
    DataError,
    check_table,
    file_sha256,
    load_manifest,
    read_json,
    staging_dir,
    write_json,
    write_table,
)
from components.data.text import Vocab, join_documents, split_text, tokens_table
from pipelines.common import main, params, paths


def normalize_char_lm(src: str | Path, out: str | Path, p: NormalizeParams) -> dict:
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


def normalize_images(src: str | Path, out: str | Path, p: ImageNormalizeParams) -> dict:
    """Stream the prepared images: per-channel statistics of train, one file per split."""
    import pyarrow.parquet as pq

    src = Path(src)
    manifest_in = load_manifest(src)
    pf = check_table(src / "images.parquet", IMAGES_SCHEMA, manifest_in["files"]["images.parquet"])
    stats = ChannelStats()
    files = {}
    with staging_dir(out) as tmp:
        for split in ("train", "val", "test"):
            path = tmp / f"{split}.parquet"
            with pq.ParquetWriter(path, IMAGES_SCHEMA, compression="zstd") as w:
                for batch in iter_split(pf, split, p.batch_size):
                    if split == "train":
                        stats.update(decode(batch) / 255.0)
                    w.write_batch(batch)
            rows = pq.ParquetFile(path).metadata.num_rows
            if rows == 0:
                raise DataError(f"{src}: the {split} split is empty")
            files[f"{split}.parquet"] = {"rows": rows, "sha256": file_sha256(path)}
        write_json(tmp / "stats.json", {"mean": stats.mean.tolist(), "std": stats.std.tolist(),
                                        "pixels": stats.count, "scale": "pixel / 255",
                                        "classes": read_json(src / "classes.json")["classes"]})
        write_json(tmp / "classes.json", read_json(src / "classes.json"))
        manifest = {"files": files, "shape": manifest_in["shape"], "mean": stats.mean.tolist(), "std": stats.std.tolist()}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def run(args: argparse.Namespace) -> None:
    if args.workload == "image_classifier":
        m = normalize_images(args.src, args.out, params(args).image_classifier.normalize)
        rows = {k.split(".")[0]: v["rows"] for k, v in m["files"].items()}
        print(f"[normalize] {rows}; train mean {[round(x, 4) for x in m['mean']]}, "
              f"std {[round(x, 4) for x in m['std']]} -> {args.out}")
        return
    m = normalize_char_lm(args.src, args.out, params(args).char_lm.normalize)
    c = m["chars"]
    print(f"[normalize] vocab {m['vocab_size']}, train {c['train']:,} / val {c['val']:,} / test {c['test']:,} chars -> {args.out}")


if __name__ == "__main__":
    main(run, __doc__, paths("--src", "--out"))
