"""The simplest models an image classifier must beat, from the same splits: the majority
class of train, and a linear model (multinomial logistic regression) on the raw pixels.

Streamed: the linear model fits on a seeded sample of at most `evaluate.baseline_rows` train
images, its pixels average-pooled to at most `MAX_SIDE` x `MAX_SIDE` (a linear model on
224 x 224 x 3 raw pixels learns no more and costs 49 times the memory), as float32; val and
test are scored batch by batch.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

MAX_SIDE = 32  # pixels per side the linear model sees at most


def features(x: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N, features) in [0, 1], average-pooled to at most MAX_SIDE per side."""
    n, c, h, w = x.shape
    fh, fw = -(-h // MAX_SIDE), -(-w // MAX_SIDE)
    if fh > 1 or fw > 1:
        hh, ww = h // fh * fh, w // fw * fw
        x = x[:, :, :hh, :ww].reshape(n, c, hh // fh, fh, ww // fw, fw).mean(axis=(3, 5))
    return (x.reshape(n, -1) / 255.0).astype(np.float32)


def baselines(x_train: np.ndarray, y_train: np.ndarray, y_all_train: np.ndarray,
              splits: dict[str, Iterable[tuple[np.ndarray, np.ndarray]]]) -> dict[str, float]:
    """`baseline_majority_<split>_accuracy` and `baseline_linear_<split>_accuracy` per split;
    `x_train`, `y_train`: the sample the linear model fits on (uint8 (N, C, H, W), or its
    `features` already); `y_all_train`:
    every train label (the majority class); `splits`: each split's batches."""
    from sklearn.linear_model import LogisticRegression

    majority = int(np.bincount(y_all_train).argmax())
    linear = LogisticRegression(max_iter=300).fit(x_train if x_train.ndim == 2 else features(x_train), y_train)
    out = {}
    for split, batches in splits.items():
        n = hits_major = hits_linear = 0
        for x, y in batches:
            n += len(y)
            hits_major += int(np.sum(y == majority))
            hits_linear += int(np.sum(linear.predict(features(x)) == y))
        out[f"baseline_majority_{split}_accuracy"] = hits_major / max(n, 1)
        out[f"baseline_linear_{split}_accuracy"] = hits_linear / max(n, 1)
    return out
