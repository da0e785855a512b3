"""The image classifier's data stages: a source -> uint8 images with a stratified split
(prepare) -> per-channel train statistics and one file per split (normalize)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from components.data.parquet import (
    DataError,
    check_table,
    file_sha256,
    load_manifest,
    read_json,
    staging_dir,
    write_json,
    write_table,
)
from components.store import download_cache
from components.workloads.image_classifier.data import (
    IMAGES_SCHEMA,
    ChannelStats,
    decode,
    images_table,
    iter_split,
    load_images,
    stratified_split,
)
from components.workloads.image_classifier.params import ImageNormalizeParams, ImagePrepareParams


def prepare_images(p: ImagePrepareParams, out: str | Path) -> dict:
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


def training_data(folder: str | Path, flip: str | bool, crop: str | bool, source: str) -> dict[str, Any]:
    """Check the normalized image files and stage them for workers."""
    from components.store import checked_and_staged

    folder = Path(folder)
    manifest, uris = checked_and_staged(folder, IMAGES_SCHEMA)
    stats = read_json(folder / "stats.json")
    h, w, c = manifest["shape"]
    return {"train_uri": uris["train"], "val_uri": uris["val"],
            "n_train": manifest["files"]["train.parquet"]["rows"], "n_val": manifest["files"]["val.parquet"]["rows"],
            "shape": [c, h, w], "n_classes": len(stats["classes"]), "classes": stats["classes"],
            "mean": stats["mean"], "std": stats["std"],
            # digits must not be flipped (a mirrored 3 is no digit); other sets may be
            "flip": (source != "digits") if flip == "auto" else bool(flip),
            "crop": True if crop == "auto" else bool(crop)}
