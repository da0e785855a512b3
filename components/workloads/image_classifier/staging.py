"""The image classifier's data stages: a source, read a batch at a time -> uint8 images of one
size with a stratified split (prepare) -> per-channel train statistics and one file per split
(normalize). Neither holds more than a batch of pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from components.data.parquet import (
    DataError,
    load_manifest,
    read_json,
    staging_dir,
    write_json,
)
from components.data.remote import join
from components.data.sources import SourceError
from components.store import download_cache
from components.workloads.image_classifier.data import (
    GREY_MODES,
    IMAGES_SCHEMA,
    BadImage,
    ChannelStats,
    FolderSource,
    ImageSet,
    decode,
    fit_image,
    images_table,
    iter_split,
    load_images,
    stratified_split,
)
from components.workloads.image_classifier.params import ImageNormalizeParams, ImagePrepareParams


def _target(p: ImagePrepareParams, src: ImageSet | FolderSource) -> tuple[tuple[int, int] | None, int]:
    """(size every image is brought to, or None to keep the source's one size; channels)."""
    channels = p.channels if p.channels != "auto" else (
        1 if all(m in GREY_MODES for m in src.modes) else 3)
    if p.image_size is not None:
        size = (p.image_size, p.image_size) if isinstance(p.image_size, int) else tuple(p.image_size)
        return (int(size[0]), int(size[1])), channels
    first = src.sizes[0]
    odd = np.flatnonzero((src.sizes != first).any(axis=1))
    if len(odd):
        name = getattr(src, "files", None)
        where = f"{join(src.root, *name[odd[0]].split('/'))}" if name is not None else f"image {odd[0]}"
        raise SourceError(f"{where}: size {tuple(src.sizes[odd[0]])} differs from the first image's {tuple(first)} "
                          f"({len(odd)} of {len(src)} images differ); set image_classifier.prepare.image_size "
                          "to bring every image to one size")
    return None, channels


def _size_summary(src: ImageSet | FolderSource) -> dict[str, Any]:
    """The source's image sizes as they were, before any resize: what a reader of the manifest asks first."""
    h, w = src.sizes[:, 0], src.sizes[:, 1]

    def q(x: np.ndarray) -> dict[str, int]:
        return {k: int(v) for k, v in zip(("min", "p10", "median", "p90", "max"),
                                          np.percentile(x, [0, 10, 50, 90, 100], method="nearest"), strict=True)}

    return {"images": len(src), "height": q(h), "width": q(w), "modes": dict(sorted(src.modes.items())),
            "distinct_sizes": int(len(np.unique(src.sizes, axis=0)))}


def prepare_images(p: ImagePrepareParams, out: str | Path) -> dict:
    """Read the image source a batch at a time (at most `batch_mb` of pixels in memory), bring each
    image to one size and channel count, split (stratified, seeded) and publish `images/` (part
    files, rows in a seeded random order), `classes.json` and `manifest.json` under `out`."""
    from concurrent.futures import ThreadPoolExecutor

    from components.data.dataset import PartWriter
    from components.data.progress import Rate

    mirror = [(m.url, m.md5) for m in p.mirror] if p.mirror else None
    src = load_images(p.source, download_cache("image_classifier"), p.on_bad_image, mirror)
    size, channels = _target(p, src)
    split = stratified_split(src.labels, p.val_frac, p.test_frac, p.seed)
    # Rows in a seeded random order: workers read row groups of contiguous rows, and a
    # class-ordered file (a folder source) would give each row group, and worker, one class.
    order = np.random.default_rng(p.seed).permutation(len(src))
    h, w = size if size else tuple(int(v) for v in src.sizes[0])
    per_batch = max(1, p.batch_mb * 2**20 // (h * w * channels))
    skipped, counts, written = list(src.skipped), {"train": 0, "val": 0, "test": 0}, 0
    rate = Rate("[prepare]", "images", len(src))

    def one(i: int) -> np.ndarray | str:
        try:
            return fit_image(src.read(int(i), size, channels), size, p.resize, channels)
        except BadImage as err:
            return str(err)

    with staging_dir(out) as tmp, ThreadPoolExecutor(max_workers=p.threads) as ex:
        writer = PartWriter(tmp / "images", IMAGES_SCHEMA)
        for at in range(0, len(order), per_batch):
            idx = order[at:at + per_batch]
            imgs, keep = [], []
            for i, img in zip(idx, ex.map(one, idx), strict=True):
                if isinstance(img, str):
                    if p.on_bad_image != "skip":
                        raise SourceError(f"{img}; set image_classifier.prepare.on_bad_image: skip to skip it")
                    skipped.append(img.split(": unreadable", 1)[0])
                    continue
                imgs.append(img)
                keep.append(i)
            if keep:
                keep_a = np.asarray(keep)
                writer.write(images_table(ImageSet(np.stack(imgs), src.labels[keep_a], src.classes), split[keep_a]))
                for k in ("train", "val", "test"):
                    counts[k] += int((split[keep_a] == k).sum())
                written += len(keep)
            rate.add(len(idx))
        if written == 0:
            raise SourceError(f"source {p.source}: no readable images")
        write_json(tmp / "classes.json", {"classes": src.classes})
        manifest = {"source": p.source, "rows": written, "shape": [h, w, channels], "splits": counts,
                    "skipped": len(skipped), "skipped_files": skipped[:100], "source_sizes": _size_summary(src),
                    "resize": p.resize if size else None}
        manifest["files"] = {"images": writer.close()}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def normalize_images(src: str | Path, out: str | Path, p: ImageNormalizeParams) -> dict:
    """Stream the prepared images, `batch_mb` at a time: per-channel statistics of train, each split
    a folder of part files (`PartWriter`: at most `part_mb` each, row groups of about `batch_mb`)."""
    from components.data.dataset import PartWriter, open_split
    from components.data.progress import Rate

    src = Path(src)
    manifest_in = load_manifest(src)
    images = open_split(src, "images", manifest_in, IMAGES_SCHEMA).uris
    h, w, c = manifest_in["shape"]
    rows = max(1, p.batch_mb * 2**20 // (h * w * c))
    stats = ChannelStats()
    files = {}
    rate = Rate("[normalize]", "images", 3 * manifest_in["rows"])
    with staging_dir(out) as tmp:
        for split in ("train", "val", "test"):
            wr = PartWriter(tmp / split, IMAGES_SCHEMA, p.part_mb << 20)
            pending: list[pa.RecordBatch] = []
            n_pending = 0
            for batch in iter_split(images, split, rows):
                if split == "train":
                    stats.update_uint8(decode(batch))
                pending.append(batch)
                n_pending += batch.num_rows
                if n_pending >= rows:  # a row group of about `batch_mb`
                    wr.write(pa.Table.from_batches(pending))
                    pending, n_pending = [], 0
                rate.add(batch.num_rows)
            if pending:
                wr.write(pa.Table.from_batches(pending))
            files[split] = wr.close()
            if files[split]["rows"] == 0:
                raise DataError(f"{src}: the {split} split is empty")
        write_json(tmp / "stats.json", {"mean": stats.mean.tolist(), "std": stats.std.tolist(),
                                        "pixels": stats.count, "scale": "pixel / 255",
                                        "classes": read_json(src / "classes.json")["classes"]})
        write_json(tmp / "classes.json", read_json(src / "classes.json"))
        manifest = {"files": files, "shape": manifest_in["shape"], "mean": stats.mean.tolist(), "std": stats.std.tolist()}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def training_data(folder: str | Path, flip: str | bool, crop: str | bool, source: str) -> dict[str, Any]:
    """Check the normalized image splits (O(1) in their size: `checked_and_staged`) and stage them for workers."""
    from components.store import checked_and_staged

    folder = Path(folder)
    manifest, splits = checked_and_staged(folder, IMAGES_SCHEMA)
    stats = read_json(folder / "stats.json")
    h, w, c = manifest["shape"]
    return {"train_uri": splits["train"], "val_uri": splits["val"],
            "n_train": manifest["files"]["train"]["rows"], "n_val": manifest["files"]["val"]["rows"],
            "shape": [c, h, w], "n_classes": len(stats["classes"]), "classes": stats["classes"],
            "mean": stats["mean"], "std": stats["std"],
            # digits must not be flipped (a mirrored 3 is no digit); other sets may be
            "flip": (source != "digits") if flip == "auto" else bool(flip),
            "crop": True if crop == "auto" else bool(crop)}
