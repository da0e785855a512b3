"""Image sources, stratified splits and streaming per-channel statistics.

Sources: scikit-learn's bundled digits (offline), CIFAR-10 and Fashion-MNIST in their real
file formats, downloaded with torchvision's downloader and checked against a checksum, and
a local folder with one subfolder per class (png/jpg).
Images are stored as uint8 HWC bytes with their shape, so every source shares one schema.
"""

from __future__ import annotations

import gzip
import pickle
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from components.data.sources import SourceError

if TYPE_CHECKING:
    import torch

IMAGES_SCHEMA = pa.schema([
    ("image", pa.binary()), ("label", pa.int16()), ("height", pa.int16()), ("width", pa.int16()),
    ("channels", pa.int16()), ("split", pa.string()),
])
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}

# The official archives and their md5 sums (as torchvision lists them).
DOWNLOADS = {
    "cifar10": [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")],
    "fashion_mnist": [
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ],
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@dataclass
class ImageSet:
    """Images (N, H, W, C) uint8, integer labels, class names, and what was skipped."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    skipped: list[str] = field(default_factory=list)


def digits() -> ImageSet:
    """scikit-learn's 1,797 8x8 digits, 0..16 intensities scaled to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (N, 8, 8, 1)
    return ImageSet(imgs, d.target.astype(np.int64), [str(c) for c in d.target_names])


def download(name: str, root: Path, mirror: list[tuple[str, str]] | None = None) -> list[Path]:
    """Fetch a data set's files with torchvision's downloader, each checked against its md5."""
    from torchvision.datasets.utils import check_integrity, download_url

    files = mirror or DOWNLOADS[name]
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for url, md5 in files:
        fname = url.rstrip("/").rsplit("/", 1)[-1]
        try:
            # md5 checked below, so that a wrong sum is not reported as a network failure;
            # a file already in the cache is reused only if its md5 matches
            if not check_integrity(str(root / fname), md5):
                (root / fname).unlink(missing_ok=True)
                download_url(url, str(root), filename=fname)
        except Exception as err:  # urllib / http errors differ by Python version
            raise SourceError(f"source {name}: download of {url} failed ({err}); is there a network? "
                              "Use source 'digits' or a local folder to work offline") from None
        if not check_integrity(str(root / fname), md5):
            (root / fname).unlink(missing_ok=True)
            raise SourceError(f"source {name}: {url} does not match its md5 {md5}")
        out.append(root / fname)
    return out


def read_cifar10(archive: Path) -> ImageSet:
    """The python-pickle CIFAR-10 archive: data_batch_1..5 and test_batch (all returned)."""
    imgs, labels, classes = [], [], None
    with tarfile.open(archive) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            if name not in members:
                raise SourceError(f"{archive}: no {name} inside: not a CIFAR-10 python archive")
            batch = pickle.load(tar.extractfile(members[name]), encoding="latin1")  # noqa: S301 (checksummed)
            imgs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.extend(batch["labels"])
        if "batches.meta" in members:
            classes = pickle.load(tar.extractfile(members["batches.meta"]), encoding="latin1")["label_names"]  # noqa: S301
    return ImageSet(np.concatenate(imgs), np.asarray(labels, dtype=np.int64), classes or [str(i) for i in range(10)])


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise SourceError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise SourceError(f"{path}: {arr.size} values, header says {shape}")
    return arr.reshape(shape)


def read_fashion_mnist(files: list[Path]) -> ImageSet:
    """The four IDX files (train images, train labels, test images, test labels), concatenated."""
    tr_x, tr_y, te_x, te_y = (_idx(f) for f in files)
    imgs = np.concatenate([tr_x, te_x])[..., None]  # (N, 28, 28, 1)
    return ImageSet(imgs, np.concatenate([tr_y, te_y]).astype(np.int64), list(FASHION_CLASSES))


def read_folder(root: Path, on_bad_image: str = "error") -> ImageSet:
    """One subfolder per class; every png/jpg decoded to uint8 HWC. A file that does not decode
    stops with its name, or is skipped and counted when `on_bad_image` is 'skip'."""
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise SourceError(f"source {root}: no class subfolders")
    imgs, labels, skipped, shape = [], [], [], None
    for label, cls in enumerate(classes):
        for f in sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(f) as im:
                    im.load()
                    arr = np.asarray(im.convert("L" if im.mode in ("L", "1", "P", "I;16") else "RGB"), dtype=np.uint8)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
                if on_bad_image == "skip":
                    skipped.append(str(f))
                    continue
                raise SourceError(f"{f}: unreadable image ({err}); set image_classifier.prepare.on_bad_image: skip to skip it") from None
            arr = arr[..., None] if arr.ndim == 2 else arr
            if shape is None:
                shape = arr.shape
            elif arr.shape != shape:
                raise SourceError(f"{f}: shape {arr.shape} differs from the first image's {shape}")
            imgs.append(arr)
            labels.append(label)
    if not imgs:
        raise SourceError(f"source {root}: no readable images")
    return ImageSet(np.stack(imgs), np.asarray(labels, dtype=np.int64), classes, skipped)


def load_images(source: str, cache: Path, on_bad_image: str = "error",
                mirror: list[tuple[str, str]] | None = None) -> ImageSet:
    """The image set named by `source`: digits, cifar10, fashion_mnist, or a folder path."""
    if source == "digits":
        return digits()
    if source == "cifar10":
        return read_cifar10(download("cifar10", cache, mirror)[0])
    if source == "fashion_mnist":
        return read_fashion_mnist(download("fashion_mnist", cache, mirror))
    path = Path(source)
    if not path.is_dir():
        raise SourceError(f"source {source}: not 'digits', 'cifar10', 'fashion_mnist' or a folder")
    return read_folder(path, on_bad_image)


def stratified_split(labels: np.ndarray, val_frac: float, test_frac: float, seed: int) -> np.ndarray:
    """'train' / 'val' / 'test' per example: each class split in the same proportions, fixed by seed."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=object)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test, n_val = round(len(idx) * test_frac), round(len(idx) * val_frac)
        out[idx[:n_test]] = "test"
        out[idx[n_test:n_test + n_val]] = "val"
        out[idx[n_test + n_val:]] = "train"
    return out


def images_table(s: ImageSet, split: np.ndarray) -> pa.Table:
    """One row per image: HWC uint8 bytes, label, shape, split."""
    n, h, w, c = s.images.shape
    return pa.table({
        "image": pa.array([img.tobytes() for img in s.images], type=pa.binary()),
        "label": pa.array(s.labels, type=pa.int16()),
        "height": pa.array(np.full(n, h), type=pa.int16()), "width": pa.array(np.full(n, w), type=pa.int16()),
        "channels": pa.array(np.full(n, c), type=pa.int16()), "split": pa.array(split.astype(str), type=pa.string()),
    }, schema=IMAGES_SCHEMA)


def decode(batch: pa.RecordBatch) -> np.ndarray:
    """A batch of rows -> (n, H, W, C) uint8."""
    h, w, c = (batch.column(k)[0].as_py() for k in ("height", "width", "channels"))
    raw = b"".join(batch.column("image").to_pylist())
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, h, w, c)


@dataclass
class ChannelStats:
    """Streaming per-channel mean and population std (Chan et al.'s parallel update, float64):
    memory is one batch, not the data set."""

    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    def update(self, pixels: np.ndarray) -> None:
        """Add (n, H, W, C) pixels already scaled to [0, 1]."""
        x = pixels.reshape(-1, pixels.shape[-1]).astype(np.float64)
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / n
        self.m2 = self.m2 + m2_b + delta**2 * self.count * n_b / n
        self.count = n

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.count)


def iter_split(pf, split: str, batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
    """Record batches of one split from a prepared images file."""
    import pyarrow.compute as pc

    for batch in pf.iter_batches(batch_size=batch_size):
        sel = batch.filter(pc.equal(batch.column("split"), split))
        if sel.num_rows:
            yield sel


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float, scaled to [0, 1] then standardised per channel."""
    return (x.float() / 255.0 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
