"""What every classifier's evaluation shares: accuracy, loss and per-class accuracy from class
probabilities, and the confusion matrix as a figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def classification_metrics(prefix: str, probs: torch.Tensor, y: torch.Tensor, classes: list[str]) -> tuple[dict, np.ndarray]:
    """Accuracy, loss, per-class accuracy, and the confusion matrix (rows: actual)."""
    pred = probs.argmax(1)
    n = len(classes)
    conf = np.zeros((n, n), dtype=np.int64)
    np.add.at(conf, (y.numpy(), pred.numpy()), 1)
    per_class = {c: float(conf[i, i] / conf[i].sum()) if conf[i].sum() else None for i, c in enumerate(classes)}
    loss = float(torch.nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)), y))
    name = "accuracy" if prefix == "val" else f"{prefix}_accuracy"
    return {name: float((pred == y).float().mean()), f"{prefix}_loss": loss, f"{prefix}_per_class_accuracy": per_class}, conf


def plot_confusion(path: Path, conf: np.ndarray, classes: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5.4))
    im = ax.imshow(conf, cmap="Blues")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="actual", title=title)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    for i in range(len(classes)):
        for j in range(len(classes)):
            if conf[i, j]:
                ax.text(j, i, conf[i, j], ha="center", va="center", fontsize=7,
                        color="white" if conf[i, j] > conf.max() / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
