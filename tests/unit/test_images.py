"""Image sources, splits and per-channel statistics, through the prepare / normalize stages."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from components.data.sources import SourceError
from components.workloads.image_classifier.data import (
    ChannelStats,
    decode,
    digits,
    load_images,
    stratified_split,
)
from tests.unit.test_sources import http_dir  # noqa: F401 (fixture)


def _stage(cwd: Path, *args: str, prepare: dict | None = None, normalize: dict | None = None):
    params = {"image_classifier": {"prepare": prepare or {}, "normalize": normalize or {}}}
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if k != "TRAINYARD_STORE"} | {"TRAINYARD_STORE": str(cwd / "store")}
    return subprocess.run([sys.executable, "-m", *args, "--workload", "image_classifier", "--params", "params.yaml"],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


def test_digits_are_uint8_images():
    s = digits()
    assert s.images.shape == (1797, 8, 8, 1) and s.images.dtype == np.uint8
    assert s.images.max() == 255 and s.classes == [str(i) for i in range(10)]


def test_split_is_stratified_and_seeded():
    labels = np.repeat(np.arange(5), [100, 50, 200, 30, 120])
    a = stratified_split(labels, 0.1, 0.2, seed=3)
    assert (a == stratified_split(labels, 0.1, 0.2, seed=3)).all()
    assert not (a == stratified_split(labels, 0.1, 0.2, seed=4)).all()
    for c, n in zip(range(5), [100, 50, 200, 30, 120], strict=True):
        got = a[labels == c]
        assert (got == "test").sum() == round(n * 0.2) and (got == "val").sum() == round(n * 0.1)


@pytest.fixture
def png_folder(tmp_path):
    """Real PNG files written from the digits, one subfolder per class, plus a corrupt one."""
    from PIL import Image

    s = digits()
    root = tmp_path / "images"
    for i in range(60):
        d = root / f"class_{s.labels[i]}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(s.images[i, :, :, 0]).save(d / f"{i:03d}.png")
    (root / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    return root, s.images[:60], s.labels[:60]


def test_folder_with_a_corrupt_image_stops_prepare_naming_it(png_folder, tmp_path):
    root, _, _ = png_folder
    p = _stage(tmp_path, "pipelines.prepare", "--out", "prepared", prepare={"source": str(root), "inputs": str(root)})
    assert p.returncode == 1
    assert "broken.png: unreadable image" in p.stderr and "on_bad_image: skip" in p.stderr
    assert not (tmp_path / "prepared").exists()


def test_folder_with_a_corrupt_image_is_skipped_and_counted(png_folder, tmp_path):
    root, images, labels = png_folder
    p = _stage(tmp_path, "pipelines.prepare", "--out", "prepared",
               prepare={"source": str(root), "inputs": str(root), "on_bad_image": "skip", "val_frac": 0.2, "test_frac": 0.2})
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "prepared/manifest.json").read_text())
    assert m["rows"] == 60 and m["skipped"] == 1 and m["skipped_files"][0].endswith("broken.png")
    t = pq.read_table(tmp_path / "prepared/images")
    got = decode(t.to_batches()[0])
    # the decoded pixels are the digits we wrote, class by class
    classes = json.loads((tmp_path / "prepared/classes.json").read_text())["classes"]
    names = [classes[i] for i in t.column("label").to_pylist()]
    for img, name in zip(got[:5], names[:5], strict=True):
        matches = [i for i in range(60) if f"class_{labels[i]}" == name and np.array_equal(images[i], img)]
        assert matches


@pytest.mark.parametrize("source, batch", [("digits", 1), ("rgb", 1)])
def test_channel_stats_match_float64_numpy(tmp_path, source, batch):
    if source == "rgb":
        from PIL import Image

        rng = np.random.default_rng(0)
        for c in range(3):
            d = tmp_path / "imgs" / f"c{c}"
            d.mkdir(parents=True)
            for i in range(40):
                Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8) // (c + 1)).save(d / f"{i}.png")
        source = str(tmp_path / "imgs")
    prepare = {"source": source, "inputs": str(tmp_path / "imgs")}
    assert _stage(tmp_path, "pipelines.prepare", "--out", "prepared", prepare=prepare).returncode == 0
    p = _stage(tmp_path, "pipelines.normalize", "--src", "prepared", "--out", "normalized",
               prepare=prepare, normalize={"batch_mb": batch})
    assert p.returncode == 0, p.stderr
    stats = json.loads((tmp_path / "normalized/stats.json").read_text())
    train = pq.read_table(tmp_path / "normalized/train")
    x = decode(train.combine_chunks().to_batches()[0]).astype(np.float64) / 255.0
    x = x.reshape(-1, x.shape[-1])
    np.testing.assert_allclose(stats["mean"], x.mean(axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(stats["std"], x.std(axis=0), rtol=0, atol=1e-6)  # population std
    assert stats["pixels"] == x.shape[0]
    # train statistics only: val and test rows are not in them
    m = json.loads((tmp_path / "normalized/manifest.json").read_text())
    assert m["files"]["train"]["rows"] == train.num_rows < sum(f["rows"] for f in m["files"].values())


def test_streaming_merge_equals_one_pass():
    rng = np.random.default_rng(1)
    x = rng.random((50, 4, 4, 3))
    s = ChannelStats()
    for i in range(0, 50, 7):
        s.update(x[i:i + 7])
    flat = x.reshape(-1, 3)
    np.testing.assert_allclose(s.mean, flat.mean(0), atol=1e-12)
    np.testing.assert_allclose(s.std, flat.std(0), atol=1e-12)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # noqa: S324


def _cifar_archive(folder: Path) -> Path:
    """A small archive in the real CIFAR-10 python format (6 pickled batches + meta)."""
    rng = np.random.default_rng(0)
    buf = folder / "cifar-10-python.tar.gz"
    with tarfile.open(buf, "w:gz") as tar:
        def add(name, obj):
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            add(name, {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 9]})
        add("batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                             "horse", "ship", "truck"]})
    return buf


def _idx_gz(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def test_cifar10_download_checked_against_md5(http_dir, tmp_path):  # noqa: F811
    folder, base = http_dir
    archive = _cifar_archive(folder)
    s = load_images("cifar10", tmp_path / "cache", mirror=[(f"{base}/{archive.name}", _md5(archive))])
    assert s.images.shape == (24, 32, 32, 3) and s.classes[9] == "truck" and s.labels[-1] == 9
    with pytest.raises(SourceError, match="does not match its md5"):
        load_images("cifar10", tmp_path / "cache2", mirror=[(f"{base}/{archive.name}", "0" * 32)])
    assert not (tmp_path / "cache2" / archive.name).exists()  # a bad download is not kept


def test_fashion_mnist_download_checked_against_md5(http_dir, tmp_path):  # noqa: F811
    folder, base = http_dir
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 28, 28)), "train-labels-idx1-ubyte.gz": np.arange(6),
             "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (2, 28, 28)), "t10k-labels-idx1-ubyte.gz": np.array([7, 9])}
    for name, arr in files.items():
        _idx_gz(folder / name, arr)
    mirror = [(f"{base}/{n}", _md5(folder / n)) for n in files]
    s = load_images("fashion_mnist", tmp_path / "cache", mirror=mirror)
    assert s.images.shape == (8, 28, 28, 1) and s.labels.tolist() == [0, 1, 2, 3, 4, 5, 7, 9]
    assert s.classes[9] == "Ankle boot"
    bad = [*mirror[:3], (mirror[3][0], "f" * 32)]
    with pytest.raises(SourceError, match="t10k-labels-idx1-ubyte.gz does not match its md5"):
        load_images("fashion_mnist", tmp_path / "cache2", mirror=bad)


def test_download_without_network_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="download of .* failed .*is there a network"):
        load_images("cifar10", tmp_path, mirror=[("http://127.0.0.1:9/cifar-10-python.tar.gz", "0" * 32)])


def _photo(rng, h: int, w: int, mode: str):
    from PIL import Image

    im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return im.convert(mode)


@pytest.fixture
def mixed_folder(tmp_path):
    """Photos as people have them: four formats, many sizes, grey, RGB, RGBA and palette images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    kinds = [(".jpg", "RGB", "JPEG"), (".png", "RGBA", "PNG"), (".webp", "RGB", "WEBP"), (".bmp", "L", "BMP"),
             (".png", "P", "PNG"), (".jpeg", "L", "JPEG")]
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(8):
            ext, mode, fmt = kinds[(c + i) % len(kinds)]
            h, w = int(rng.integers(20, 90)), int(rng.integers(20, 90))
            _photo(rng, h, w, mode).save(root / f"class{c}" / f"{i}{ext}", fmt)
    return root


def test_a_folder_of_mixed_sizes_and_modes_is_brought_to_one_size(mixed_folder, tmp_path):
    prepare = {"source": str(mixed_folder), "inputs": str(mixed_folder), "val_frac": 0.2, "test_frac": 0.2}
    p = _stage(tmp_path, "pipelines.prepare", "--out", "prepared", prepare=prepare)
    assert p.returncode == 1 and "not_there" not in p.stderr
    assert "differs from the first image's" in p.stderr and "image_size" in p.stderr, p.stderr
    assert not (tmp_path / "prepared").exists()
    p = _stage(tmp_path, "pipelines.prepare", "--out", "prepared", prepare=prepare | {"image_size": 24})
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "prepared/manifest.json").read_text())
    assert m["shape"] == [24, 24, 3] and m["rows"] == 24 and m["resize"] == "center_crop"
    sizes = m["source_sizes"]
    assert sizes["images"] == 24 and sizes["distinct_sizes"] > 10 and set(sizes["modes"]) == {"RGB", "RGBA", "L", "P"}
    assert 20 <= sizes["height"]["min"] <= sizes["height"]["median"] <= sizes["height"]["max"] < 90
    t = pq.read_table(tmp_path / "prepared/images")
    assert set(t.column("height").to_pylist()) == {24} and set(t.column("channels").to_pylist()) == {3}
    assert "from " in p.stdout and "sizes" in p.stdout  # the summary line says the sizes were many
    p = _stage(tmp_path, "pipelines.prepare", "--out", "grey", prepare=prepare | {"image_size": [16, 20],
                                                                                  "resize": "plain", "channels": 1})
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "grey/manifest.json").read_text())["shape"] == [16, 20, 1]


def test_fit_image_crops_the_centre_or_resizes_plainly():
    from components.workloads.image_classifier.data import fit_image

    img = np.zeros((20, 60, 3), np.uint8)
    img[:, 20:40] = 255  # a white band in the middle third
    crop = fit_image(img, (10, 10), "center_crop", 3)
    assert crop.shape == (10, 10, 3) and crop.min() > 200  # the centre is the band
    plain = fit_image(img, (10, 10), "plain", 3)
    assert plain.shape == (10, 10, 3) and plain[:, 0].max() < 50 and plain[:, 5].min() > 200  # squeezed, not cut
    grey = fit_image(img, None, "center_crop", 1)
    assert grey.shape == (20, 60, 1) and grey[0, 30, 0] == 255
    assert fit_image(grey, None, "plain", 3).shape == (20, 60, 3)


def test_an_image_whose_pixels_are_cut_short_is_named_or_skipped(mixed_folder, tmp_path):
    good = (mixed_folder / "class0" / "0.jpg").read_bytes()
    (mixed_folder / "class1" / "cut.jpg").write_bytes(good[: len(good) // 3])  # the header reads; the pixels do not
    prepare = {"source": str(mixed_folder), "inputs": str(mixed_folder), "image_size": 16}
    p = _stage(tmp_path, "pipelines.prepare", "--out", "prepared", prepare=prepare)
    assert p.returncode == 1 and "cut.jpg: unreadable image" in p.stderr.splitlines()[-1], p.stderr
    assert not (tmp_path / "prepared").exists()
    p = _stage(tmp_path, "pipelines.prepare", "--out", "prepared", prepare=prepare | {"on_bad_image": "skip"})
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "prepared/manifest.json").read_text())
    assert m["rows"] == 24 and m["skipped"] == 1 and m["skipped_files"][0].endswith("cut.jpg")


def test_prepare_holds_a_batch_of_pixels_not_the_set(mixed_folder, tmp_path, monkeypatch):
    """Rows reach the Parquet writer a batch at a time: no batch is bigger than batch_mb."""
    import pyarrow.parquet as pq_mod

    from components.workloads.image_classifier.params import ImagePrepareParams
    from components.workloads.image_classifier.staging import prepare_images

    seen: list[int] = []
    real = pq_mod.ParquetWriter.write_table

    def spy(self, table, *a, **kw):
        seen.append(table.num_rows)
        return real(self, table, *a, **kw)

    monkeypatch.setattr(pq_mod.ParquetWriter, "write_table", spy)
    monkeypatch.setenv("TRAINYARD_STORE", str(tmp_path / "store"))
    p = ImagePrepareParams(source=str(mixed_folder), image_size=64, batch_mb=1)  # 1 MB: 85 images of 64 x 64 x 3
    prepare_images(p.model_copy(update={"batch_mb": 1}), tmp_path / "out")
    assert sum(seen) == 24 and max(seen) <= 2**20 // (64 * 64 * 3)


def test_a_16_bit_grey_image_is_scaled_to_8_bits_not_clipped(tmp_path):
    from PIL import Image

    from components.workloads.image_classifier.data import read_folder

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        ramp = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 256).astype(np.uint16)  # 0 .. 65,280
        Image.fromarray(ramp).save(tmp_path / c / "scan.png")
    src = read_folder(tmp_path)
    assert src.modes and all(m.startswith("I") for m in src.modes)
    img = src.read(0, channels=1)
    assert img.shape == (16, 16, 1) and img.dtype == np.uint8
    assert img[0, 0, 0] == 0 and img[-1, -1, 0] == 255 and len(np.unique(img)) == 256  # the whole ramp, not white
