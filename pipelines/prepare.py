"""prepare: raw data -> Parquet, plus a manifest.

char_lm: one row per document. image_classifier: one row per image (uint8 pixels, label,
shape, a stratified split) and a class-name table.

    python -m pipelines.prepare --workload char_lm --out data/char_lm/prepared
    python -m pipelines.prepare --workload image_classifier --out data/image_classifier/prepared
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow as pa

from components.config import ImagePrepareParams
from components.data.images import images_table, load_images, stratified_split
from components.data.parquet import DOCS_SCHEMA, staging_dir, write_json, write_table
from components.data.sources import SourceError, load_source
from components.runtime import download_cache
from pipelines.common import main, params, paths


def prepare_char_lm(source: str, sha256: str | None, out: str) -> dict:
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


def prepare_images(p: ImagePrepareParams, out: str) -> dict:
    """Load the image source, split it (stratified, seeded), publish `images.parquet`,
    `classes.json` and `manifest.json` under `out`."""
    mirror = [(m.url, m.md5) for m in p.mirror] if p.mirror else None
    s = load_images(p.source, download_cache("image_classifier"), p.on_bad_image, mirror)
    split = stratified_split(s.labels, p.val_frac, p.test_frac, p.seed)
    # Rows in a seeded random order: workers later read contiguous row ranges, and a
    # class-ordered file (a folder source) would give each worker different classes.
    order = np.random.default_rng(p.seed).permutation(len(s.labels))
    s.images, s.labels, split = s.images[order], s.labels[order], split[order]
    table = images_table(s, split)
    with staging_dir(out) as tmp:
        entry = write_table(tmp / "images.parquet", table, row_group_size=4096)
        write_json(tmp / "classes.json", {"classes": s.classes})
        manifest = {"source": p.source, "rows": table.num_rows, "shape": list(s.images.shape[1:]),
                    "splits": {k: int((split == k).sum()) for k in ("train", "val", "test")},
                    "skipped": len(s.skipped), "skipped_files": s.skipped[:100],
                    "files": {"images.parquet": entry}}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def run(args: argparse.Namespace) -> None:
    if args.workload == "image_classifier":
        m = prepare_images(params(args).image_classifier.prepare, args.out)
        print(f"[prepare] {m['rows']} images {tuple(m['shape'])}, splits {m['splits']}, "
              f"{m['skipped']} skipped -> {args.out}")
        return
    p = params(args).char_lm.prepare
    m = prepare_char_lm(p.source, p.sha256, args.out)
    print(f"[prepare] {m['rows']} documents, {m['chars']:,} characters from {p.source} -> {args.out}")


if __name__ == "__main__":
    main(run, __doc__, paths("--out"))
