"""Image sources, stratified splits and streaming per-channel statistics.

Sources: scikit-learn's bundled digits (offline), CIFAR-10 and Fashion-MNIST in their real
file formats, downloaded with torchvision's downloader and checked against a checksum, and
a local folder with one subfolder per class (png/jpg).
Images are stored as uint8 HWC bytes with their shape, so every source shares one schema.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from components.data.remote import is_remote, join, kind, listdir, open_input
from components.data.sources import SourceError

if TYPE_CHECKING:
    import torch

IMAGES_SCHEMA = pa.schema([
    ("image", pa.binary()), ("label", pa.int16()), ("height", pa.int16()), ("width", pa.int16()),
    ("channels", pa.int16()), ("split", pa.string()),
])
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
GREY_MODES = ("L", "1", "I;16", "I;16B", "I;16L", "I", "F", "LA")  # read as one channel

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

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sizes(self) -> np.ndarray:
        """(N, 2) height, width of each image (one size: an array source)."""
        return np.tile(np.asarray(self.images.shape[1:3], dtype=np.int64), (len(self.labels), 1))

    @property
    def modes(self) -> dict[str, int]:
        return {"L" if self.images.shape[3] == 1 else "RGB": len(self.labels)}

    def read(self, i: int, target: tuple[int, int] | None = None, channels: int | None = None) -> np.ndarray:
        """Image `i` as uint8 HWC (`FolderSource.read`'s signature; nothing to decode here)."""
        return self.images[i]


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


class BadImage(SourceError):
    """An image file that does not decode (its header, or its pixels)."""


def _native(im) -> np.ndarray:
    """A PIL image as uint8 HWC in its own channels: grey for grey modes, RGB otherwise."""
    return _as_uint8(im, 1 if im.mode in GREY_MODES else 3)


def _as_uint8(im, channels: int) -> np.ndarray:
    """A PIL image as uint8 HWC with `channels`. 16-bit grey (a scan, a medical image) is scaled to
    8 bits, not clipped (PIL's own conversion to "L" turns every value over 255 white)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I") and channels == 1:
        wide = np.asarray(im, dtype=np.int64)
        return (wide.clip(0, 65535) >> 8).astype(np.uint8)[..., None]
    arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


@dataclass
class FolderSource:
    """A folder with one subfolder per class, read lazily: the index (file names, labels, each
    file's size and mode, from its header) is listed up front, a few dozen bytes an image; pixels
    are decoded only when `read` asks for them, a batch at a time."""

    root: Path | str  # a folder, or an object-store URI (`components.data.remote`)
    classes: list[str]
    files: list[str]  # relative to root
    labels: np.ndarray
    sizes: np.ndarray  # (N, 2) height, width of each file as it is
    modes: dict[str, int]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int, target: tuple[int, int] | None = None, channels: int | None = None) -> np.ndarray:
        """Image `i` as uint8 HWC, in `channels` (else its own) and drafted near `target`
        (a JPEG decodes at 1/2, 1/4 or 1/8 scale when that still covers the target: less work)."""
        from PIL import Image, UnidentifiedImageError

        path = join(self.root, *self.files[i].split("/"))
        try:
            with Image.open(_readable(path)) as im:
                if target is not None and im.format == "JPEG":
                    im.draft("L" if channels == 1 else "RGB", (target[1], target[0]))
                im.load()
                if channels is None:
                    return _native(im)
                return _as_uint8(im, channels)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise BadImage(f"{path}: unreadable image ({err})") from None



def _readable(path: Path | str, head: int | None = None) -> Path | io.BytesIO:
    """A local path as it is; an object's bytes (the first `head` of them: a header) in memory."""
    if isinstance(path, Path):
        return path
    with open_input(path) as f:
        return io.BytesIO(f.read(head) if head else f.read())


def _entries(root: Path | str) -> list[tuple[str, bool]]:
    """(name, is a folder) of what is directly in `root`, sorted."""
    if isinstance(root, Path):
        return sorted((p.name, p.is_dir()) for p in root.iterdir())
    return listdir(root)


def read_folder(root: Path | str, on_bad_image: str = "error", threads: int = 4) -> FolderSource:
    """List a folder with one subfolder per class: every png / jpg / webp / bmp file's header is
    read (size and mode; a thread pool, headers only), so a file that does not open stops with
    its name, or is skipped and counted when `on_bad_image` is 'skip'. A file whose pixels turn
    out to be damaged is found when prepare decodes it."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image, UnidentifiedImageError

    if (kind(root) if isinstance(root, str) else ("dir" if root.is_dir() else "missing")) != "dir":
        raise SourceError(f"source {root}: not 'digits', 'cifar10', 'fashion_mnist' or a folder")
    classes = [name for name, is_dir in _entries(root) if is_dir and not name.startswith(".")]
    if not classes:
        raise SourceError(f"source {root}: no class subfolders")
    listed: list[tuple[str, int]] = []
    for label, cls in enumerate(classes):
        listed += [(f"{cls}/{name}", label) for name, is_dir in _entries(join(root, cls))
                   if not is_dir and Path(name).suffix.lower() in IMAGE_SUFFIXES]

    def header(rel: str) -> tuple[int, int, str] | str:
        path = join(root, *rel.split("/"))
        try:
            with Image.open(_readable(path, head=1 << 18)) as im:  # the header: size and mode, no pixels
                return im.height, im.width, im.mode
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            return f"{path}: unreadable image ({err})"

    files, labels, sizes, modes, skipped = [], [], [], {}, []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as ex:
        for (rel, label), h in zip(listed, ex.map(header, [r for r, _ in listed]), strict=True):
            if isinstance(h, str):
                if on_bad_image == "skip":
                    skipped.append(str(root / rel))
                    continue
                raise SourceError(f"{h}; set image_classifier.prepare.on_bad_image: skip to skip it")
            files.append(rel)
            labels.append(label)
            sizes.append(h[:2])
            modes[h[2]] = modes.get(h[2], 0) + 1
    if not files:
        raise SourceError(f"source {root}: no readable images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return FolderSource(root, classes, files, np.asarray(labels, dtype=np.int64),
                        np.asarray(sizes, dtype=np.int64).reshape(-1, 2), modes, skipped)


def load_images(source: str, cache: Path, on_bad_image: str = "error",
                mirror: list[tuple[str, str]] | None = None) -> ImageSet | FolderSource:
    """The image set named by `source`: digits, cifar10, fashion_mnist (arrays of a known, fixed
    size), or a folder path (read lazily, `FolderSource`)."""
    if source == "digits":
        return digits()
    if source == "cifar10":
        return read_cifar10(download("cifar10", cache, mirror)[0])
    if source == "fashion_mnist":
        return read_fashion_mnist(download("fashion_mnist", cache, mirror))
    return read_folder(source if is_remote(source) else Path(source), on_bad_image)


def fit_image(img: np.ndarray, size: tuple[int, int] | None, resize: str, channels: int) -> np.ndarray:
    """uint8 HWC brought to `channels` (grey <-> RGB) and to `size` (H, W): `center_crop` scales the
    image so that it covers `size` (its shorter side, for a square) and crops the centre, as
    torchvision's Resize + CenterCrop; `plain` resizes to `size` exactly, as Resize((h, w))."""
    from PIL import Image

    if img.shape[2] != channels:
        img = img.mean(axis=2, keepdims=True).round().astype(np.uint8) if channels == 1 else np.repeat(img, 3, axis=2)
    if size is None or tuple(img.shape[:2]) == tuple(size):
        return img
    th, tw = size
    h, w = img.shape[:2]
    im = Image.fromarray(img[..., 0] if channels == 1 else img)
    if resize == "plain":
        im = im.resize((tw, th), Image.BILINEAR)
    else:
        scale = max(th / h, tw / w)
        nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
        im = im.resize((nw, nh), Image.BILINEAR)
        top, left = (nh - th) // 2, (nw - tw) // 2
        im = im.crop((left, top, left + tw, top + th))
    out = np.asarray(im, dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


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


def decode(batch: pa.RecordBatch | pa.Table) -> np.ndarray:
    """A batch of rows -> (n, H, W, C) uint8, a view of the column's buffer where it is one (no
    copy: read-only; copy it to write)."""
    col = batch.column("image")
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    h, w, c = (batch.column(k)[0].as_py() for k in ("height", "width", "channels"))
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int32)[col.offset:col.offset + len(col) + 1]
    flat = np.frombuffer(col.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    if flat.size != len(col) * h * w * c:
        raise ValueError(f"{len(col)} images of {h} x {w} x {c} should be {len(col) * h * w * c} bytes, "
                         f"not {flat.size}: rows of different sizes in one batch")
    return flat.reshape(-1, h, w, c)


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

    def update_uint8(self, images: np.ndarray, chunk: int = 1 << 16) -> None:
        """Add (n, H, W, C) uint8 images, scaled to [0, 1] a chunk of `chunk` pixels at a time
        (a float64 copy of a whole batch is 8 times its bytes)."""
        flat = images.reshape(-1, images.shape[-1])
        for i in range(0, len(flat), chunk):
            self.update(flat[i:i + chunk] / 255.0)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.count)


def iter_split(uris: list[str] | tuple[str, ...], split: str, batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
    """Record batches of one split from the prepared images' parts, `batch_size` rows at a time."""
    import pyarrow.compute as pc

    from components.data.dataset import iter_batches

    for batch in iter_batches(uris, batch_size):
        sel = batch.filter(pc.equal(batch.column("split"), split))
        if sel.num_rows:
            yield sel


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float, scaled to [0, 1] then standardised per channel."""
    return (x.float() / 255.0 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
