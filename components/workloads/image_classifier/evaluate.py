"""Image-classifier evaluation: reading splits, predictions with test-time shifts, CAM figures
(accuracy and the confusion matrix: `components.evaluation`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.data.dataset import iter_batches, open_split
from components.store import verified_cache
from components.workloads.image_classifier.data import IMAGES_SCHEMA, decode, normalize
from components.workloads.image_classifier.model import cam, class_probs


def split_batches(folder: str | Path, split: str, manifest: dict[str, Any],
                  bs: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A checked split, `bs` rows at a time in file order: uint8 (n, C, H, W) images and int64 labels."""
    for batch in iter_batches(open_split(folder, split, manifest, IMAGES_SCHEMA, verified_cache()).uris, bs):
        x = decode(batch).transpose(0, 3, 1, 2)
        yield torch.from_numpy(x.copy()), torch.from_numpy(batch.column("label").to_numpy().astype(np.int64))


def read_images(folder: str | Path, split: str, manifest: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole checked split in memory (benches and small sets; the stages stream `split_batches`)."""
    xs, ys = zip(*split_batches(folder, split, manifest), strict=True)
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def predict_split(model: torch.nn.Module, blob: dict[str, Any], folder: str | Path, split: str,
                  manifest: dict[str, Any], bs: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, n_classes) and labels of a split, streamed `bs` images at a time:
    memory is a batch of pixels and the probabilities, not the split's images."""
    probs, labels = [], []
    for x, y in split_batches(folder, split, manifest, bs):
        probs.append(predict(model, blob, x, bs))
        labels.append(y)
    return torch.cat(probs), torch.cat(labels)


@torch.no_grad()
def predict(model: torch.nn.Module, blob: dict[str, Any], x: torch.Tensor, bs: int = 512) -> torch.Tensor:
    """Class probabilities (N, n_classes) for uint8 (N, C, H, W) images, averaged over the
    model file's test-time shifts (none in files written before they existed)."""
    mean, std = torch.tensor(blob["mean"]), torch.tensor(blob["std"])
    shift = blob.get("tta_shift", 0)
    return torch.cat([class_probs(model, x[i:i + bs], mean, std, shift) for i in range(0, len(x), bs)])


def plot_cams(path: Path, model: torch.nn.Module, blob: dict[str, Any], x: torch.Tensor, y: torch.Tensor) -> None:
    """Each image beside its class activation map for the predicted class, upsampled to it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean, std = torch.tensor(blob["mean"]), torch.tensor(blob["std"])
    xn = normalize(x, mean, std)
    maps = cam(model, xn)  # (n, h, w)
    pred = model(xn).argmax(1)
    up = torch.nn.functional.interpolate(maps[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    n = len(x)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4))
    for k in range(n):
        img = x[k].permute(1, 2, 0).numpy()
        axes[0, k].imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None)
        axes[0, k].set_title(f"{blob['classes'][int(y[k])]}", fontsize=8)
        axes[1, k].imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None)
        axes[1, k].imshow(up[k].numpy(), cmap="jet", alpha=0.35)
        axes[1, k].set_title(f"pred {blob['classes'][int(pred[k])]}", fontsize=8)
        for a in axes[:, k]:
            a.axis("off")
    fig.suptitle("class activation maps (predicted class)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
